"""GET /tasks/{id}: owners see their tasks; other agents get 404, admins see all."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_id(agent: Any) -> str:
    return agent.client.post("/tasks", manual_task_body(echo_pipeline(1)), format="json").json()["id"]


def test_owner_reads_its_task(agent: Any, task_id: str) -> None:
    response = agent.client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json()["id"] == task_id
    assert response["X-Request-ID"]


def test_other_agent_gets_404(make_agent: Any, task_id: str) -> None:
    response = make_agent().client.get(f"/tasks/{task_id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_admin_reads_any_task(make_agent: Any, task_id: str) -> None:
    assert make_agent(admin=True).client.get(f"/tasks/{task_id}").status_code == 200


def test_unknown_and_malformed_ids_are_404(agent: Any) -> None:
    assert agent.client.get(f"/tasks/{uuid.uuid4()}").status_code == 404
    response = agent.client.get("/tasks/not-a-uuid")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_request_id_is_echoed(agent: Any, task_id: str) -> None:
    response = agent.client.get(f"/tasks/{task_id}", HTTP_X_REQUEST_ID="abc-123")
    assert response["X-Request-ID"] == "abc-123"
