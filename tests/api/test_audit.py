"""GET /audit: admins read the audit log, newest first, filtered by action, subject, actor and time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.models import AuditLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(name="auditor", admin=True)


def results(client: APIClient, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/audit{query}")
    assert response.status_code == 200, response.json()
    return list(response.json()["results"])


def test_items_have_the_documented_shape_newest_first(admin: Any) -> None:
    admin.client.post("/agents", {"name": "newcomer", "scopes": []}, HTTP_X_REQUEST_ID="req-audit-shape")

    items = results(admin.client)

    newest = items[0]
    assert set(newest) == {"at", "actor", "action", "subject_type", "subject_id", "details", "request_id"}
    assert newest["action"] == "token.issue"  # agent.create, then its first token
    assert items[1]["action"] == "agent.create"
    assert newest["actor"] == {"kind": "agent", "id": str(admin.agent.pk), "name": "auditor"}
    assert newest["request_id"] == "req-audit-shape"
    assert newest["subject_type"] == "agent"
    ats = [item["at"] for item in items]
    assert ats == sorted(ats, reverse=True)


def test_pagination(admin: Any) -> None:
    for n in range(5):
        audit_record(actor=Actor.system("tests"), action="test.page", subject_id=n)
    body = admin.client.get("/audit?action=test.page&limit=2&offset=1").json()
    assert body["count"] == 5
    assert [item["subject_id"] for item in body["results"]] == ["3", "2"]
    assert body["next"]
    assert body["previous"]


def test_filter_by_action_exact_and_prefix(admin: Any) -> None:
    system = Actor.system("tests")
    audit_record(actor=system, action="token.issue")
    audit_record(actor=system, action="token.revoke")
    audit_record(actor=system, action="tokens.other")
    assert {i["action"] for i in results(admin.client, "?action=token.revoke")} == {"token.revoke"}
    assert {i["action"] for i in results(admin.client, "?action=token.*")} == {"token.issue", "token.revoke"}


def test_filter_by_subject(admin: Any) -> None:
    system = Actor.system("tests")
    audit_record(actor=system, action="x", subject_type="task", subject_id="t-1")
    audit_record(actor=system, action="x", subject_type="run", subject_id="t-1")
    audit_record(actor=system, action="x", subject_type="task", subject_id="t-2")
    assert len(results(admin.client, "?subject=task:t-1")) == 1
    assert len(results(admin.client, "?subject=t-1")) == 2
    assert len(results(admin.client, "?subject=task:&action=x")) == 2
    assert len(results(admin.client, "?subject_type=run&subject_id=t-1")) == 1


def test_filter_by_actor_id_or_name_and_kind(admin: Any, make_agent: Any) -> None:
    other = make_agent(name="other-admin", admin=True)
    other.client.post("/agents", {"name": "made-by-other", "scopes": []})
    by_name = results(admin.client, "?actor=other-admin")
    by_id = results(admin.client, f"?actor={other.agent.pk}")
    assert by_name == by_id
    assert {i["action"] for i in by_name} == {"agent.create", "token.issue"}
    assert all(i["actor"]["kind"] == "system" for i in results(admin.client, "?actor_kind=system"))


def test_filter_by_time(admin: Any) -> None:
    at = audit_record(actor=Actor.system("tests"), action="test.time").at
    second = timedelta(seconds=1)

    def count(**bounds: Any) -> int:
        query = urlencode({"action": "test.time", **{k: v.isoformat() for k, v in bounds.items()}})
        return len(results(admin.client, f"?{query}"))

    assert count(since=at - second) == 1
    assert count(since=at + second) == 0
    assert count(until=at) == 0
    assert count(until=at + second) == 1
    assert count(since=at - second, until=at + second) == 1


def test_offsets_postgres_cannot_store_are_accepted_as_instants(admin: Any) -> None:
    audit_record(actor=Actor.system("tests"), action="test.offset")
    assert len(results(admin.client, "?action=test.offset&until=9999-01-01T00%3A00%3A00-22%3A18")) == 1
    assert results(admin.client, "?action=test.offset&until=0273-04-30T15%3A45%3A06-22%3A18") == []


@pytest.mark.parametrize(
    "query", ["?since=yesterday", "?until=2024-13-45T00:00:00Z", "?actor_kind=robot", "?since=0001-01-01T00:00%2B05:00"]
)
def test_bad_filter_is_400_naming_it(admin: Any, query: str) -> None:
    response = admin.client.get(f"/audit{query}")
    assert response.status_code == 400
    assert query[1:].split("=")[0] in response.json()["error"]["fields"]


def test_deactivating_an_agent_keeps_its_history_readable(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    admin.client.delete(f"/agents/{target.agent.pk}")
    actions = {i["action"] for i in results(admin.client, f"?subject=agent:{target.agent.pk}")}
    assert actions == {"agent.create", "token.issue", "agent.deactivate"}
    assert AuditLog.objects.filter(subject_id=str(target.agent.pk)).count() == 3


def test_audit_needs_admin_even_with_every_other_scope(make_agent: Any) -> None:
    everything_but_admin = make_agent()
    response = everything_but_admin.client.get("/audit")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_audit_without_token_is_401() -> None:
    assert APIClient().get("/audit").status_code == 401


def test_audit_is_read_only(admin: Any) -> None:
    assert admin.client.post("/audit", {"action": "forged"}).status_code == 405
    assert admin.client.delete("/audit").status_code == 405
    assert not AuditLog.objects.filter(action="forged").exists()
