"""DELETE /tasks/{id}: 204, the task stops firing and disappears; its runs stay readable."""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask

from tasks.models import Task
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


def test_delete_stops_firing_and_keeps_runs(agent: Any) -> None:
    body = {"title": "t", "schedule_kind": "interval", "schedule_expr": "60", "payload": echo_pipeline(1)}
    task_id = agent.client.post("/tasks", body, format="json").json()["id"]
    run_id = agent.client.post(f"/tasks/{task_id}/run_now").json()["id"]

    assert agent.client.delete(f"/tasks/{task_id}").status_code == 204

    assert agent.client.get(f"/tasks/{task_id}").status_code == 404
    assert agent.client.get(f"/runs/{run_id}").status_code == 200
    assert not PeriodicTask.objects.get(pk=Task.objects.get(pk=task_id).periodic_task_id).enabled
    assert agent.client.delete(f"/tasks/{task_id}").status_code == 404


def test_other_agent_cannot_delete(agent: Any, make_agent: Any) -> None:
    task_id = agent.client.post(
        "/tasks", {"title": "t", "schedule_kind": "manual", "payload": echo_pipeline(1)}, format="json"
    ).json()["id"]
    assert make_agent().client.delete(f"/tasks/{task_id}").status_code == 404
    assert make_agent(scopes=["tasks:read"]).client.delete(f"/tasks/{task_id}").status_code == 403
    assert Task.objects.get(pk=task_id).deleted_at is None
