"""GET /tasks/{id}/next_runs: the next occurrences as beat will dispatch them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


def _task(client: Any, **fields: Any) -> str:
    body = {"title": "t", "payload": echo_pipeline(1), **fields}
    response = client.post("/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_next_runs_with_local_time_and_utc(agent: Any) -> None:
    task_id = _task(
        agent.client,
        schedule_kind="rrule",
        timezone="Europe/Chisinau",
        schedule_expr="FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30",
    )
    body = agent.client.get(f"/tasks/{task_id}/next_runs?count=7").json()
    assert len(body["occurrences"]) == 7
    for occurrence in body["occurrences"]:
        assert occurrence["at"][11:16] == "08:30"
        assert occurrence["at"][19:] in ("+02:00", "+03:00")
        assert occurrence["utc"].endswith("Z")
    assert body["description"].startswith("Every weekday (Monday to Friday), at 08:30")
    assert agent.client.get(f"/tasks/{task_id}/next_runs").json()["occurrences"].__len__() == 5


def test_first_next_run_equals_the_tasks_next_run_at(agent: Any) -> None:
    task_id = _task(agent.client, schedule_kind="cron", schedule_expr="15 */3 * * *", timezone="America/New_York")
    task = agent.client.get(f"/tasks/{task_id}").json()
    first = agent.client.get(f"/tasks/{task_id}/next_runs").json()["occurrences"][0]
    assert first["utc"].replace("Z", "+00:00") == task["next_run_at"].replace("Z", "+00:00")


def test_paused_and_manual_tasks_have_none(agent: Any) -> None:
    paused = _task(agent.client, schedule_kind="cron", schedule_expr="*/5 * * * *")
    assert len(agent.client.get(f"/tasks/{paused}/next_runs").json()["occurrences"]) == 5
    assert agent.client.post(f"/tasks/{paused}/pause").status_code == 200
    assert agent.client.get(f"/tasks/{paused}/next_runs").json()["occurrences"] == []
    manual = _task(agent.client, schedule_kind="manual")
    assert agent.client.get(f"/tasks/{manual}/next_runs").json()["occurrences"] == []


def test_count_is_bounded(agent: Any) -> None:
    task_id = _task(agent.client, schedule_kind="interval", schedule_expr="60")
    assert agent.client.get(f"/tasks/{task_id}/next_runs?count=101").status_code == 400
    assert agent.client.get(f"/tasks/{task_id}/next_runs?count=0").status_code == 400


def test_other_agent_404_and_scope_403(agent: Any, make_agent: Any) -> None:
    task_id = _task(agent.client, schedule_kind="interval", schedule_expr="60")
    assert make_agent().client.get(f"/tasks/{task_id}/next_runs").status_code == 404
    assert make_agent(scopes=["runs:read"]).client.get(f"/tasks/{task_id}/next_runs").status_code == 403
