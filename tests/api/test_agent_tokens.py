"""POST/GET /agents/{id}/tokens and DELETE /agents/{id}/tokens/{prefix}: issue, list by prefix, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import AgentToken, AuditLog
from ordinaut_site.services import token_issue

pytestmark = pytest.mark.django_db


def client_with(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(admin=True)


def test_issue_token_shown_once_and_working(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    expires = (timezone.now() + timedelta(days=7)).isoformat()

    response = admin.client.post(f"/agents/{target.agent.pk}/tokens", {"expires_at": expires, "label": "ci"})

    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith(f"ord_{body['prefix']}_")
    assert body["label"] == "ci"
    assert body["expires_at"]
    assert body["active"] is True
    assert client_with(body["token"]).get("/agents/me").json()["id"] == str(target.agent.pk)
    listed = admin.client.get(f"/agents/{target.agent.pk}/tokens").json()
    assert body["token"] not in str(listed)
    assert AuditLog.objects.filter(action="token.issue", details__prefix=body["prefix"]).exists()


def test_list_tokens_shows_prefixes_only_newest_first(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    second = admin.client.post(f"/agents/{target.agent.pk}/tokens", {}).json()

    response = admin.client.get(f"/agents/{target.agent.pk}/tokens")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"][0]["prefix"] == second["prefix"]
    for item in body["results"]:
        assert set(item) == {
            "prefix",
            "label",
            "scopes",
            "created_at",
            "last_used_at",
            "expires_at",
            "revoked_at",
            "active",
        }


def test_token_in_the_past_is_400(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    past = (timezone.now() - timedelta(minutes=1)).isoformat()
    response = admin.client.post(f"/agents/{target.agent.pk}/tokens", {"expires_at": past}, format="json")
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["fields"]


def test_bad_expiry_is_400(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    response = admin.client.post(f"/agents/{target.agent.pk}/tokens", {"expires_at": "tomorrow"}, format="json")
    assert response.status_code == 400
    assert "expires_at" in response.json()["error"]["fields"]


def test_revoke_stops_the_token_and_is_audited(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    prefix = target.token.split("_")[1]

    response = admin.client.delete(f"/agents/{target.agent.pk}/tokens/{prefix}")

    assert response.status_code == 204
    assert target.client.get("/agents/me").status_code == 401
    listed = admin.client.get(f"/agents/{target.agent.pk}/tokens").json()["results"]
    assert listed[0]["revoked_at"]
    assert listed[0]["active"] is False
    assert admin.client.delete(f"/agents/{target.agent.pk}/tokens/{prefix}").status_code == 204
    assert AuditLog.objects.filter(action="token.revoke", details__prefix=prefix).count() == 1


def test_revoke_unknown_prefix_or_another_agents_token_is_404(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    other = make_agent()
    other_prefix = other.token.split("_")[1]
    assert admin.client.delete(f"/agents/{target.agent.pk}/tokens/zzzzzzzz").status_code == 404
    assert admin.client.delete(f"/agents/{target.agent.pk}/tokens/{other_prefix}").status_code == 404
    assert other.client.get("/agents/me").status_code == 200


def test_tokens_of_an_unknown_agent_are_404(admin: Any) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    assert admin.client.get(f"/agents/{missing}/tokens").status_code == 404
    assert admin.client.post(f"/agents/{missing}/tokens", {}).status_code == 404


def test_agents_admin_cannot_take_over_a_stronger_agent(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin"])
    admin = make_agent(admin=True)
    prefix = admin.token.split("_")[1]

    assert manager.client.post(f"/agents/{admin.agent.pk}/tokens", {}).status_code == 403
    assert manager.client.delete(f"/agents/{admin.agent.pk}/tokens/{prefix}").status_code == 403
    assert admin.client.get("/agents/me").status_code == 200


def test_agents_admin_manages_weaker_agents_and_itself(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin", "tasks:read"])
    weaker = make_agent(scopes=["tasks:read"])
    assert manager.client.post(f"/agents/{weaker.agent.pk}/tokens", {}).status_code == 201
    assert manager.client.post(f"/agents/{manager.agent.pk}/tokens", {}).status_code == 201


def test_token_for_a_deactivated_agent_is_409(admin: Any, make_agent: Any) -> None:
    target = make_agent()
    admin.client.delete(f"/agents/{target.agent.pk}")
    response = admin.client.post(f"/agents/{target.agent.pk}/tokens", {})
    assert response.status_code == 409


def test_tokens_need_agents_admin(make_agent: Any) -> None:
    plain = make_agent(scopes=["tasks:read"])
    prefix = plain.token.split("_")[1]
    assert plain.client.get(f"/agents/{plain.agent.pk}/tokens").status_code == 403
    assert plain.client.post(f"/agents/{plain.agent.pk}/tokens", {}).status_code == 403
    assert plain.client.delete(f"/agents/{plain.agent.pk}/tokens/{prefix}").status_code == 403


def test_tokens_without_token_is_401(make_agent: Any) -> None:
    target = make_agent()
    assert APIClient().get(f"/agents/{target.agent.pk}/tokens").status_code == 401


def test_a_token_narrowed_to_some_scopes_can_do_only_that(make_agent: Any) -> None:
    root = make_agent(admin=True)
    worker_agent = make_agent(scopes=["tasks:read", "tasks:write", "runs:read"])
    issued = root.client.post(
        f"/agents/{worker_agent.agent.pk}/tokens", {"scopes": ["tasks:read"], "label": "read-only"}, format="json"
    )
    assert issued.status_code == 201
    assert issued.json()["scopes"] == ["tasks:read"]
    narrow = APIClient()
    narrow.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.json()['token']}")
    assert narrow.get("/tasks").status_code == 200
    body = {"title": "t", "schedule_kind": "manual", "payload": {"pipeline": []}}
    assert narrow.post("/tasks", body, format="json").status_code == 403
    assert narrow.get("/agents/me").json()["scopes"] == ["tasks:read"]
    assert worker_agent.client.post("/tasks", body, format="json").status_code == 201, (
        "the agent's other tokens keep all"
    )


def test_a_token_cannot_widen_the_agents_scopes(make_agent: Any) -> None:
    root = make_agent(admin=True)
    reader = make_agent(scopes=["tasks:read"])
    response = root.client.post(f"/agents/{reader.agent.pk}/tokens", {"scopes": ["tasks:write"]}, format="json")
    assert response.status_code == 400
    assert "scopes" in response.json()["error"]["fields"]


# --- A token never issues a token stronger than itself ---------------------------------------


def narrowed(make_agent: Any, scopes: list[str], token_scopes: list[str], admin: bool = False) -> Any:
    """An agent holding `scopes` (every scope with admin) and a client on a token narrowed to `token_scopes`."""
    handle = make_agent(scopes=scopes, admin=admin)
    _, raw = token_issue(agent=handle.agent, actor=SYSTEM, scopes=token_scopes)
    return handle.agent, client_with(raw)


def test_a_narrowed_token_issues_its_agent_no_token_stronger_than_itself(make_agent: Any) -> None:
    agent, client = narrowed(make_agent, ["agents:admin", "tasks:read", "tasks:write"], ["agents:admin"])

    response = client.post(f"/agents/{agent.pk}/tokens", {}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["scopes"] == ["agents:admin"]
    issued = client_with(response.json()["token"])
    assert issued.get("/agents/me").json()["scopes"] == ["agents:admin"]
    assert issued.get("/tasks").status_code == 403
    row = AuditLog.objects.get(action="token.issue", details__prefix=response.json()["prefix"])
    assert row.details["scopes"] == ["agents:admin"]


def test_a_narrowed_token_cannot_name_scopes_it_lacks(make_agent: Any) -> None:
    agent, client = narrowed(make_agent, ["agents:admin", "tasks:read", "tasks:write"], ["agents:admin"])
    before = AgentToken.objects.count()

    response = client.post(f"/agents/{agent.pk}/tokens", {"scopes": ["tasks:write"]}, format="json")

    assert response.status_code == 403
    assert response.json()["error"]["fields"] == {"scopes": ["not held by the caller: tasks:write"]}
    assert AgentToken.objects.count() == before


def test_a_token_narrowed_without_admin_is_not_an_admin_when_issuing(make_agent: Any) -> None:
    agent, client = narrowed(make_agent, [], ["agents:admin", "tasks:read"], admin=True)

    named = client.post(f"/agents/{agent.pk}/tokens", {"scopes": ["admin"]}, format="json")
    omitted = client.post(f"/agents/{agent.pk}/tokens", {}, format="json")

    assert named.status_code == 403
    assert omitted.status_code == 201
    assert omitted.json()["scopes"] == ["agents:admin", "tasks:read"]
    assert client_with(omitted.json()["token"]).get("/audit").status_code == 403


def test_a_narrowed_token_holding_all_the_targets_scopes_issues_it_a_full_token(make_agent: Any) -> None:
    _, client = narrowed(make_agent, ["agents:admin", "tasks:read", "runs:read"], ["agents:admin", "tasks:read"])
    weaker = make_agent(scopes=["tasks:read"])

    response = client.post(f"/agents/{weaker.agent.pk}/tokens", {}, format="json")

    assert response.status_code == 201
    assert response.json()["scopes"] == []


def test_an_admin_token_issues_any_token(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    assert admin.client.post(f"/agents/{admin.agent.pk}/tokens", {}).json()["scopes"] == []
    response = admin.client.post(f"/agents/{admin.agent.pk}/tokens", {"scopes": ["admin"]}, format="json")
    assert response.json()["scopes"] == ["admin"]
