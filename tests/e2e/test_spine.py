"""The spine end to end: API -> Run -> Celery chain on a real worker -> StepRun rows -> result."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.celery import app
from runs.models import Run, StepRun
from runs.services import STEP_JOB_NAME
from tests.support.pipelines import echo_pipeline, manual_task_body
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def _run_finished(run_id: str) -> Run | None:
    run = Run.objects.get(pk=run_id)
    return run if run.status in Run.TERMINAL else None


def _create_and_run(client: Any, payload: dict[str, Any]) -> str:
    created = client.post("/tasks", manual_task_body(payload), format="json")
    assert created.status_code == 201, created.json()
    started = client.post(f"/tasks/{created.json()['id']}/run_now", format="json")
    assert started.status_code == 202, started.json()
    assert started.json()["status"] == "queued"
    return started.json()["id"]


def test_three_step_echo_pipeline_succeeds_with_ordered_step_rows(agent: Any, worker: Any) -> None:
    run_id = _create_and_run(agent.client, echo_pipeline(3))

    run = wait_for(lambda: _run_finished(run_id), message="the run to finish")

    assert run.status == Run.Status.SUCCEEDED
    steps = list(StepRun.objects.filter(run=run).order_by("index"))
    assert [s.step_id for s in steps] == ["s0", "s1", "s2"]
    assert [s.status for s in steps] == ["succeeded"] * 3
    assert [s.output for s in steps] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert all(s.attempts == 1 for s in steps)
    started = [s.started_at for s in steps]
    assert None not in started
    assert started == sorted(started)  # type: ignore[type-var]
    assert run.result == {"i": 2}

    body = agent.client.get(f"/runs/{run_id}").json()
    assert body["status"] == "succeeded"
    assert [s["output"] for s in body["steps"]] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert body["context"]["now"] is not None


def test_failing_step_fails_run_with_error_and_leaves_later_steps_pending(agent: Any, worker: Any) -> None:
    payload = {
        "pipeline": [
            {"id": "first", "uses": "orchestrator.echo", "with": {"a": 1}},
            {"id": "broken", "uses": "nowhere.missing_tool", "with": {}},
            {"id": "never", "uses": "orchestrator.echo", "with": {}},
        ]
    }
    run_id = _create_and_run(agent.client, payload)

    run = wait_for(lambda: _run_finished(run_id), message="the run to finish")

    assert run.status == Run.Status.FAILED
    assert run.error["step_id"] == "broken"
    assert run.error["code"] == "unknown_tool"
    assert "nowhere.missing_tool" in run.error["message"]
    statuses = dict(StepRun.objects.filter(run=run).values_list("step_id", "status"))
    assert statuses == {"first": "succeeded", "broken": "failed", "never": "pending"}
    body = agent.client.get(f"/runs/{run_id}").json()
    assert body["error"]["step_id"] == "broken"


def test_redelivered_step_messages_after_success_change_nothing(agent: Any, worker: Any) -> None:
    start = worker.processed().get(STEP_JOB_NAME, 0)
    run_id = _create_and_run(agent.client, echo_pipeline(2))
    run = wait_for(lambda: _run_finished(run_id), message="the run to finish")
    before = {s.pk: (s.status, s.attempts, s.finished_at) for s in StepRun.objects.filter(run=run)}
    wait_for(lambda: worker.processed().get(STEP_JOB_NAME, 0) >= start + 2, message="the worker to count both steps")

    for index in (0, 1):  # the broker hands both step messages out again
        app.send_task(STEP_JOB_NAME, args=(run_id, index))
    wait_for(
        lambda: worker.processed().get(STEP_JOB_NAME, 0) >= start + 4, message="the redelivered messages to be run"
    )

    after = {s.pk: (s.status, s.attempts, s.finished_at) for s in StepRun.objects.filter(run=run)}
    assert after == before
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.dispatch_count == 1
