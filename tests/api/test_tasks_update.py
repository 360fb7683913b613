"""PATCH /tasks/{id}: validates the merged task, re-syncs the schedule, never half-writes."""

from __future__ import annotations

from typing import Any

import pytest
from django_celery_beat.models import PeriodicTask

from tasks.models import Task
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_id(agent: Any) -> str:
    body = {
        "title": "daily",
        "schedule_kind": "cron",
        "schedule_expr": "0 9 * * *",
        "timezone": "Europe/Chisinau",
        "payload": echo_pipeline(1),
    }
    return agent.client.post("/tasks", body, format="json").json()["id"]


def test_patch_schedule_resyncs_beat_and_next_run(agent: Any, task_id: str) -> None:
    before = agent.client.get(f"/tasks/{task_id}").json()
    response = agent.client.patch(f"/tasks/{task_id}", {"schedule_expr": "30 7 * * 1-5"}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["schedule_expr"] == "30 7 * * 1-5"
    assert body["next_run_at"] != before["next_run_at"]
    assert "07:30" in body["schedule_description"]
    assert "Monday through Friday" in body["schedule_description"]
    row = PeriodicTask.objects.get(pk=Task.objects.get(pk=task_id).periodic_task_id)
    assert (row.crontab.minute, row.crontab.hour) == ("30", "7")


def test_patch_kind_validates_the_merged_result(agent: Any, task_id: str) -> None:
    # Changing the kind alone leaves a cron expression that is not an RRULE: 400, nothing written.
    response = agent.client.patch(f"/tasks/{task_id}", {"schedule_kind": "rrule"}, format="json")
    assert response.status_code == 400
    assert "schedule_expr" in response.json()["error"]["fields"]
    assert Task.objects.get(pk=task_id).schedule_kind == "cron"


def test_patch_title_and_policies(agent: Any, task_id: str) -> None:
    body = agent.client.patch(
        f"/tasks/{task_id}", {"title": "renamed", "overlap": "allow", "jitter_seconds": 5}, format="json"
    ).json()
    assert (body["title"], body["overlap"], body["jitter_seconds"]) == ("renamed", "allow", 5)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timezone": "Nowhere/Land"}, "timezone"),
        ({"payload": {"pipeline": [{"id": "x"}]}}, "payload.pipeline.0.uses"),
        ({"condition": "task.params.["}, "condition"),
        ({"overlap": "sometimes"}, "overlap"),
        ({"title": ""}, "title"),
    ],
)
def test_invalid_patch_is_400_and_changes_nothing(agent: Any, task_id: str, body: dict[str, Any], field: str) -> None:
    response = agent.client.patch(f"/tasks/{task_id}", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert Task.objects.get(pk=task_id).title == "daily"


def test_other_agent_and_missing_scope(make_agent: Any, task_id: str) -> None:
    assert make_agent().client.patch(f"/tasks/{task_id}", {"title": "x"}, format="json").status_code == 404
    reader = make_agent(scopes=["tasks:read"])
    assert reader.client.patch(f"/tasks/{task_id}", {"title": "x"}, format="json").status_code == 403
