"""POST /tasks: creation, validation errors in the one error shape, authentication."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tasks.models import Task
from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db


def test_create_manual_task_returns_201_with_every_field(agent: Any) -> None:
    response = agent.client.post("/tasks", manual_task_body(echo_pipeline(2), title="hello"), format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["title"] == "hello"
    assert body["status"] == "active"
    assert body["created_by"] == {"id": str(agent.agent.pk), "name": agent.agent.name}
    for field in (
        "id",
        "description",
        "schedule_kind",
        "schedule_expr",
        "timezone",
        "payload",
        "priority",
        "max_retries",
        "timeout_seconds",
        "catchup_window_seconds",
        "overlap",
        "jitter_seconds",
        "condition",
        "next_run_at",
        "last_run_at",
        "snoozed_until",
        "schedule_description",
        "created_at",
        "updated_at",
    ):
        assert field in body, field
    assert body["payload"]["params"] == {}
    assert Task.objects.get(pk=body["id"]).owner == agent.agent


def test_trailing_slash_is_accepted(agent: Any) -> None:
    assert agent.client.post("/tasks/", manual_task_body(echo_pipeline(1)), format="json").status_code == 201


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"schedule_kind": "manual", "payload": {"pipeline": []}}, "title"),
        ({"title": "x", "schedule_kind": "hourly", "payload": {"pipeline": []}}, "schedule_kind"),
        (
            {"title": "x", "schedule_kind": "manual", "payload": {"pipeline": []}, "timezone": "Mars/Olympus"},
            "timezone",
        ),
        ({"title": "x", "schedule_kind": "manual", "payload": {"pipeline": [{"id": "a"}]}}, "payload.pipeline.0.uses"),
        (
            {
                "title": "x",
                "schedule_kind": "manual",
                "payload": {
                    "pipeline": [{"id": "a", "uses": "orchestrator.echo"}, {"id": "a", "uses": "orchestrator.echo"}]
                },
            },
            "payload.pipeline.1.id",
        ),
        (
            {
                "title": "x",
                "schedule_kind": "manual",
                "payload": {"pipeline": [{"uses": "orchestrator.echo", "bogus": 1}]},
            },
            "payload.pipeline.0.bogus",
        ),
        ({"title": "x", "schedule_kind": "manual", "payload": {"params": []}}, "payload.params"),
        ({"title": "x", "schedule_kind": "cron", "payload": {"pipeline": []}}, "schedule_expr"),
        ({"title": "x", "schedule_kind": "manual", "payload": {"pipeline": []}, "priority": 10}, "priority"),
    ],
)
def test_invalid_task_is_400_naming_the_field(agent: Any, body: dict[str, Any], field: str) -> None:
    response = agent.client.post("/tasks", body, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"]
    assert field in error["message"]
    assert response.json()["request_id"] == response["X-Request-ID"]
    assert Task.objects.count() == 0


def test_malformed_json_is_400_in_the_error_shape(agent: Any) -> None:
    response = agent.client.post("/tasks", data='{"title": ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_missing_token_is_401(db: Any) -> None:
    response = APIClient().post("/tasks", manual_task_body(echo_pipeline(1)), format="json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_wrong_token_is_401(db: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ord_abcdefgh_not-a-real-secret")
    assert client.post("/tasks", manual_task_body(echo_pipeline(1)), format="json").status_code == 401


def test_token_without_write_scope_is_403(make_agent: Any) -> None:
    reader = make_agent(scopes=["tasks:read"])
    response = reader.client.post("/tasks", manual_task_body(echo_pipeline(1)), format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert "tasks:write" in response.json()["error"]["message"]


def test_idempotency_key_replays_the_first_task_and_refuses_another_body(agent: Any) -> None:
    body = manual_task_body(echo_pipeline(1), title="once only")
    first = agent.client.post("/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="create-1")
    again = agent.client.post("/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="create-1")
    other = agent.client.post("/tasks", {**body, "title": "different"}, format="json", HTTP_IDEMPOTENCY_KEY="create-1")
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["error"]["code"] == "conflict"
    assert Task.objects.filter(title="once only").count() == 1


def test_a_foreach_over_more_items_than_the_limit_is_a_400_naming_it(agent: Any, settings: Any) -> None:
    settings.ORDINAUT_MAX_FOREACH_ITEMS = 3
    step = {"id": "each", "uses": "orchestrator.echo", "foreach": [1, 2, 3, 4], "with": {"v": "${item}"}}

    response = agent.client.post("/tasks", manual_task_body({"pipeline": [step]}), format="json")

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert "payload.pipeline.0.foreach" in body["error"]["fields"]
    assert "ORDINAUT_MAX_FOREACH_ITEMS is 3" in body["error"]["fields"]["payload.pipeline.0.foreach"][0]
    assert not Task.objects.exists(), "nothing half-written"
