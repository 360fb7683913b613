"""Audit coverage: every mutating endpoint, admin action and system transition writes its audit row,
with the actor's snapshot, the subject and the request id of the request that did it."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor
from ordinaut_site.models import AgentToken, AuditLog
from runs.models import Approval, Run
from runs.services import approval_expire
from tasks.models import Task
from tasks.services import task_create, task_fire
from tests.support.api_matrix import (
    MATRIX,
    OWNER_SCOPES,
    Endpoint,
    World,
    build_world,
    call,
    db_fingerprint,
)
from tests.support.pipelines import approval_payload, echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db

NEW = "new"  # the subject is the object the request created (its id is in the response)
TARGET = "target"  # the subject is the object the path names

# (method, path) -> the audit rows it writes: (action, subject_type, which subject).
AUDITED: dict[tuple[str, str], list[tuple[str, str, str]]] = {
    ("POST", "/agents"): [("agent.create", "agent", NEW), ("token.issue", "agent", NEW)],
    ("DELETE", "/agents/{id}"): [("agent.deactivate", "agent", TARGET)],
    ("POST", "/agents/{id}/tokens"): [("token.issue", "agent", TARGET)],
    ("DELETE", "/agents/{id}/tokens/{prefix}"): [("token.revoke", "agent", TARGET)],
    ("POST", "/tasks"): [("task.create", "task", NEW)],
    ("PATCH", "/tasks/{id}"): [("task.update", "task", TARGET)],
    ("DELETE", "/tasks/{id}"): [("task.delete", "task", TARGET)],
    ("POST", "/tasks/{id}/run_now"): [("run.create", "run", NEW)],
    ("POST", "/tasks/{id}/pause"): [("task.pause", "task", TARGET)],
    ("POST", "/tasks/{id}/resume"): [("task.resume", "task", TARGET)],
    ("POST", "/tasks/{id}/cancel"): [("task.cancel", "task", TARGET)],
    ("POST", "/tasks/{id}/snooze"): [("task.snooze", "task", TARGET)],
    ("POST", "/runs/{id}/cancel"): [("run.cancel", "run", TARGET)],
    ("POST", "/runs/{id}/replay"): [("run.replay", "run", NEW)],
    ("POST", "/runs/{id}/approve"): [("approval.approve", "run", TARGET)],
    ("POST", "/runs/{id}/reject"): [("approval.reject", "run", TARGET)],
    ("POST", "/tool-servers"): [("tool_server.create", "tool_server", NEW)],
    ("POST", "/tool-servers/{name}/refresh"): [("tool_server.refresh", "tool_server", TARGET)],
    ("POST", "/events"): [("event.publish", "event", NEW)],
}
# POSTs that compute an answer and change nothing.
READ_ONLY_POSTS = {("POST", "/schedules/preview"), ("POST", "/pipelines/validate")}
WRITES = [endpoint for endpoint in MATRIX if endpoint.writes]
MUTATING_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def owner(make_agent: Any) -> Any:
    return make_agent(name="audit-owner", scopes=OWNER_SCOPES)


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(name="audit-admin", admin=True)


@pytest.fixture
def world(owner: Any) -> World:
    return build_world(owner.agent)


def test_every_mutating_operation_is_audited_or_changes_nothing() -> None:
    schema = APIClient().get("/openapi.json").json()
    mutating = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method.upper() in MUTATING_METHODS
    }
    assert mutating == set(AUDITED) | READ_ONLY_POSTS
    assert {(endpoint.method, endpoint.path) for endpoint in WRITES} == set(AUDITED)


def _new_subject_id(body: dict[str, Any]) -> str:
    return str(body["agent"]["id"] if "agent" in body else body["id"])


@pytest.mark.parametrize("endpoint", WRITES, ids=str)
def test_each_mutating_endpoint_writes_its_audit_rows(endpoint: Endpoint, owner: Any, admin: Any, world: World) -> None:
    caller = owner if endpoint.scope in OWNER_SCOPES else admin
    request_id = f"audit-{uuid.uuid4().hex}"

    response = call(caller.client, endpoint, world.url(endpoint), HTTP_X_REQUEST_ID=request_id)

    assert response.status_code == endpoint.success, response.content[:300]
    assert response["X-Request-ID"] == request_id
    rows = list(AuditLog.objects.filter(request_id=request_id).order_by("id"))
    expected = AUDITED[(endpoint.method, endpoint.path)]
    assert [row.action for row in rows] == [action for action, _, _ in expected]
    for row, (_, subject_type, which) in zip(rows, expected, strict=True):
        subject_id = _new_subject_id(response.json()) if which == NEW else world.ids[str(endpoint.target)]
        assert (row.actor_kind, row.actor_id, row.actor_name) == ("agent", str(caller.agent.pk), caller.agent.name)
        assert (row.subject_type, row.subject_id) == (subject_type, subject_id)
        assert isinstance(row.details, dict)


def test_the_fingerprint_sees_every_table_a_request_can_change() -> None:
    tables = set(db_fingerprint())
    assert {"ordinaut.Agent", "ordinaut.AgentToken", "ordinaut.AuditLog", "tasks.Task", "runs.Run"} <= tables
    assert {"runs.StepRun", "runs.Approval", "ordinaut.IdempotencyRecord", "django_celery_beat.PeriodicTask"} <= tables


@pytest.mark.parametrize(("method", "path"), sorted(READ_ONLY_POSTS))
def test_read_only_posts_change_nothing(method: str, path: str, owner: Any) -> None:
    endpoint = next(e for e in MATRIX if (e.method, e.path) == (method, path))
    owner.client.get("/agents/me")
    before = db_fingerprint()
    assert call(owner.client, endpoint, endpoint.path).status_code == endpoint.success
    assert db_fingerprint() == before


def test_a_refused_change_writes_no_audit_row(owner: Any, world: World) -> None:
    url = f"/tasks/{world.ids['paused_task']}/pause"  # already paused: 409
    response = owner.client.post(url, HTTP_X_REQUEST_ID="audit-refused")
    assert response.status_code == 409
    assert not AuditLog.objects.filter(request_id="audit-refused").exists()


def test_the_audit_row_carries_the_generated_request_id_when_none_was_sent(owner: Any, world: World) -> None:
    response = owner.client.post(f"/tasks/{world.ids['task']}/pause")
    assert response.status_code == 200
    row = AuditLog.objects.get(action="task.pause", subject_id=world.ids["task"])
    assert row.request_id
    assert row.request_id == response["X-Request-ID"]


# --- The Django admin: operators' actions are audited with the operator as actor ----------------


@pytest.fixture
def operator(db: Any) -> Any:
    return get_user_model().objects.create_superuser("operator", "op@example.com", "pw-not-used")


@pytest.fixture
def operator_client(operator: Any) -> Client:
    client = Client()
    client.force_login(operator)
    return client


# (admin changelist, action name, the world object it acts on, audit action, subject type, subject)
ADMIN_ACTIONS = [
    ("runs/approval", "approve_all_items", "approval", "approval.approve", "run", "waiting_run"),
    ("runs/approval", "reject", "approval", "approval.reject", "run", "waiting_run"),
    ("runs/run", "cancel_runs", "waiting_run", "run.cancel", "run", "waiting_run"),
    ("runs/run", "replay_from_failed_step", "failed_run", "run.replay", "run", NEW),
    ("runs/run", "replay_from_start", "failed_run", "run.replay", "run", NEW),
    ("tasks/task", "run_now", "task", "run.create", "run", NEW),
    ("tasks/task", "pause", "task", "task.pause", "task", "task"),
    ("tasks/task", "resume", "paused_task", "task.resume", "task", "paused_task"),
    ("tasks/task", "snooze_one_hour", "task", "task.snooze", "task", "task"),
    ("ordinaut/agent", "issue_token", "agent", "token.issue", "agent", "agent"),
    ("ordinaut/agent", "deactivate", "agent", "agent.deactivate", "agent", "agent"),
    ("ordinaut/agenttoken", "revoke", "victim_token", "token.revoke", "agent", "agent"),
    ("pipelines/toolserver", "refresh", "tool_server", "tool_server.refresh", "tool_server", "tool_server"),
]


@pytest.mark.parametrize(
    ("changelist", "action", "selected", "audit_action", "subject_type", "subject"),
    ADMIN_ACTIONS,
    ids=[f"{row[0]}:{row[1]}" for row in ADMIN_ACTIONS],
)
def test_admin_actions_are_audited_with_the_operator_and_request_id(
    changelist: str,
    action: str,
    selected: str,
    audit_action: str,
    subject_type: str,
    subject: str,
    operator: Any,
    operator_client: Client,
    world: World,
) -> None:
    ids = dict(world.ids)
    ids["victim_token"] = str(AgentToken.objects.get(prefix=world.victim_prefix).pk)
    request_id = f"admin-{uuid.uuid4().hex}"

    response = operator_client.post(
        f"/admin/{changelist}/",
        {"action": action, "_selected_action": [ids[selected]], "index": "0"},
        HTTP_X_REQUEST_ID=request_id,
    )

    assert response.status_code == 302, response.content[:500]
    row = AuditLog.objects.get(request_id=request_id, action=audit_action)
    assert (row.actor_kind, row.actor_id, row.actor_name) == ("user", str(operator.pk), "operator")
    assert row.subject_type == subject_type
    if subject == NEW:
        assert row.subject_id not in ids.values()
        assert Run.objects.filter(pk=row.subject_id).exists()
    else:
        assert row.subject_id == ids[subject]


# --- System transitions -----------------------------------------------------------------------


def test_a_task_completing_is_audited_as_the_system(owner: Any) -> None:
    at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    task = task_create(
        owner=owner.agent,
        actor=Actor.system("tests"),
        fields={"title": "once", "schedule_kind": "once", "schedule_expr": at.isoformat(), "payload": echo_pipeline(1)},
    )

    task_fire(task_id=task.pk, scheduled_for=at, now=at)

    assert Task.objects.get(pk=task.pk).status == Task.Status.COMPLETED
    row = AuditLog.objects.get(action="task.complete", subject_id=str(task.pk))
    assert (row.actor_kind, row.actor_name, row.subject_type) == ("system", "system", "task")
    assert row.details["last_occurrence"] == at.isoformat()


def test_an_approval_expiring_is_audited_as_the_system(owner: Any) -> None:
    run = run_in_process(owner.agent, approval_payload(timeout_seconds=60))
    assert run.status == Run.Status.WAITING_APPROVAL

    assert approval_expire(run_id=run.pk, now=timezone.now() + timedelta(minutes=5))

    assert Approval.objects.get(run=run).status == Approval.Status.EXPIRED
    row = AuditLog.objects.get(action="approval.expire", subject_id=str(run.pk))
    assert (row.actor_kind, row.subject_type) == ("system", "run")
