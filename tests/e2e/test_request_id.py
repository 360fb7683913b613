"""The request id of the API call that started a run travels with its Celery messages: every step's
worker lines carry it (and so can be joined to the request), through the whole chain."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from runs.models import StepRun
from tests.support.pipelines import finished, manual_task_body
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def test_a_runs_steps_run_with_the_request_id_that_started_it(agent: Any, worker: Any) -> None:
    payload = {
        "pipeline": [{"id": "first", "uses": "testing.log_context"}, {"id": "second", "uses": "testing.log_context"}]
    }
    created = agent.client.post("/tasks", manual_task_body(payload), format="json")
    assert created.status_code == 201, created.json()
    request_id = f"req-{uuid.uuid4().hex[:12]}"

    started = agent.client.post(f"/tasks/{created.json()['id']}/run_now", format="json", HTTP_X_REQUEST_ID=request_id)
    assert started.status_code == 202
    assert started["X-Request-ID"] == request_id
    run = wait_for(lambda: finished(started.json()["id"]), message="the run to finish")

    assert run.status == "succeeded", run.error
    outputs = {step.step_id: step.output for step in StepRun.objects.filter(run=run)}
    assert outputs["first"]["request_id"] == request_id  # type: ignore[index]
    assert outputs["second"]["request_id"] == request_id, "the rest of the chain carries it on"  # type: ignore[index]
    assert outputs["second"]["run"] == str(run.pk)  # type: ignore[index]


def test_a_run_started_without_a_request_has_none(agent: Any, worker: Any) -> None:
    from runs.services import run_create
    from tests.support.pipelines import make_task

    run = run_create(
        task=make_task(agent.agent, {"pipeline": [{"id": "only", "uses": "testing.log_context"}]}), trigger="manual"
    )

    run = wait_for(lambda: finished(run.pk), message="the run to finish")
    assert (StepRun.objects.get(run=run).output or {})["request_id"] is None
