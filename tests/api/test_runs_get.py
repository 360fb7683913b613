"""GET /runs/{id}: the run with its steps; visibility follows the task owner."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def run_id(agent: Any) -> str:
    task_id = agent.client.post("/tasks", manual_task_body(echo_pipeline(2)), format="json").json()["id"]
    return agent.client.post(f"/tasks/{task_id}/run_now").json()["id"]


def test_owner_reads_run_with_steps(agent: Any, run_id: str) -> None:
    body = agent.client.get(f"/runs/{run_id}").json()
    assert body["id"] == run_id
    assert [(s["index"], s["id"], s["status"]) for s in body["steps"]] == [(0, "s0", "pending"), (1, "s1", "pending")]
    for field in (
        "task",
        "task_title",
        "trigger",
        "scheduled_for",
        "status",
        "skip_reason",
        "created_at",
        "started_at",
        "finished_at",
        "lateness_seconds",
        "replay_of",
        "error",
        "result",
        "context",
    ):
        assert field in body, field


def test_other_agent_gets_404_and_admin_200(make_agent: Any, run_id: str) -> None:
    assert make_agent().client.get(f"/runs/{run_id}").status_code == 404
    assert make_agent(admin=True).client.get(f"/runs/{run_id}").status_code == 200


def test_runs_need_runs_read_scope(make_agent: Any, agent: Any, run_id: str) -> None:
    response = make_agent(scopes=["tasks:read"]).client.get(f"/runs/{run_id}")
    assert response.status_code == 403


def test_anonymous_is_401(run_id: str) -> None:
    assert APIClient().get(f"/runs/{run_id}").status_code == 401
