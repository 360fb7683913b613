"""POST /tasks/{id}/pause, /resume, /cancel: status transitions, 409 on the wrong state."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_id(agent: Any) -> str:
    body = {"title": "t", "schedule_kind": "cron", "schedule_expr": "0 9 * * *", "payload": echo_pipeline(1)}
    return agent.client.post("/tasks", body, format="json").json()["id"]


def test_pause_then_resume(agent: Any, task_id: str) -> None:
    paused = agent.client.post(f"/tasks/{task_id}/pause")
    assert paused.status_code == 200
    assert (paused.json()["status"], paused.json()["next_run_at"]) == ("paused", None)
    resumed = agent.client.post(f"/tasks/{task_id}/resume/")
    assert resumed.status_code == 200
    assert resumed.json()["status"] == "active"
    assert resumed.json()["next_run_at"] is not None


def test_wrong_state_is_409(agent: Any, task_id: str) -> None:
    response = agent.client.post(f"/tasks/{task_id}/resume")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_cancel_is_final(agent: Any, task_id: str) -> None:
    assert agent.client.post(f"/tasks/{task_id}/cancel").json()["status"] == "canceled"
    assert agent.client.post(f"/tasks/{task_id}/resume").status_code == 409
    assert agent.client.post(f"/tasks/{task_id}/run_now").status_code == 409


def test_paused_task_can_still_run_by_hand(agent: Any, task_id: str) -> None:
    agent.client.post(f"/tasks/{task_id}/pause")
    assert agent.client.post(f"/tasks/{task_id}/run_now").status_code == 202


@pytest.mark.parametrize("verb", ["pause", "resume", "cancel"])
def test_other_agent_404_and_scope_403(make_agent: Any, task_id: str, verb: str) -> None:
    assert make_agent().client.post(f"/tasks/{task_id}/{verb}").status_code == 404
    assert make_agent(scopes=["tasks:read"]).client.post(f"/tasks/{task_id}/{verb}").status_code == 403
