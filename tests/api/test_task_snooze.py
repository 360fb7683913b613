"""POST /tasks/{id}/snooze: postpones the next run; covered occurrences are skipped."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_id(agent: Any) -> str:
    body = {"title": "t", "schedule_kind": "cron", "schedule_expr": "*/10 * * * *", "payload": echo_pipeline(1)}
    return agent.client.post("/tasks", body, format="json").json()["id"]


def test_delay_moves_next_run_and_next_runs_show_the_skips(agent: Any, task_id: str) -> None:
    before = datetime.fromisoformat(agent.client.get(f"/tasks/{task_id}").json()["next_run_at"])
    response = agent.client.post(
        f"/tasks/{task_id}/snooze", {"delay_seconds": 1500, "reason": "meeting"}, format="json"
    )
    assert response.status_code == 200
    body = response.json()
    wake = before + timedelta(seconds=1500)
    assert datetime.fromisoformat(body["next_run_at"]) == wake
    assert datetime.fromisoformat(body["snoozed_until"]) == wake
    upcoming = agent.client.get(f"/tasks/{task_id}/next_runs?count=5").json()["occurrences"]
    assert [o.get("skipped") for o in upcoming] == ["snoozed", "snoozed", "snoozed", None, None]
    assert datetime.fromisoformat(upcoming[3]["at"]) == wake


def test_until(agent: Any, task_id: str) -> None:
    before = datetime.fromisoformat(agent.client.get(f"/tasks/{task_id}").json()["next_run_at"])
    until = (before + timedelta(hours=2)).isoformat()
    body = agent.client.post(f"/tasks/{task_id}/snooze", {"until": until}, format="json").json()
    assert datetime.fromisoformat(body["next_run_at"]) == before + timedelta(hours=2)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "delay_seconds"),
        ({"delay_seconds": 10, "until": "2030-01-01T00:00:00Z"}, "delay_seconds"),
        ({"delay_seconds": 0}, "delay_seconds"),
        ({"until": "2000-01-01T00:00:00Z"}, "until"),
        ({"until": "tomorrow"}, "until"),
    ],
)
def test_bad_snooze_is_400(agent: Any, task_id: str, body: dict[str, Any], field: str) -> None:
    response = agent.client.post(f"/tasks/{task_id}/snooze", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_snoozing_a_manual_or_paused_task_is_409(agent: Any, task_id: str) -> None:
    agent.client.post(f"/tasks/{task_id}/pause")
    assert agent.client.post(f"/tasks/{task_id}/snooze", {"delay_seconds": 60}, format="json").status_code == 409
    manual = agent.client.post(
        "/tasks", {"title": "m", "schedule_kind": "manual", "payload": echo_pipeline(1)}, format="json"
    ).json()["id"]
    assert agent.client.post(f"/tasks/{manual}/snooze", {"delay_seconds": 60}, format="json").status_code == 409


def test_other_agent_404_and_scope_403(make_agent: Any, task_id: str) -> None:
    assert make_agent().client.post(f"/tasks/{task_id}/snooze", {"delay_seconds": 60}, format="json").status_code == 404
    reader = make_agent(scopes=["tasks:read"])
    assert reader.client.post(f"/tasks/{task_id}/snooze", {"delay_seconds": 60}, format="json").status_code == 403
