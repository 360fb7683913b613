"""Record-level idempotency of steps, driven in-process through the engine (no broker)."""

from __future__ import annotations

from typing import Any

import pytest

from runs.engine import Next, step_execute
from runs.models import Run, StepRun
from runs.services import RunAlreadyExists, run_create
from tasks.models import Task

pytestmark = pytest.mark.django_db


@pytest.fixture
def task(agent: Any) -> Task:
    return Task.objects.create(
        owner=agent.agent,
        title="t",
        schedule_kind="manual",
        payload={
            "params": {},
            "pipeline": [
                {"id": "a", "uses": "orchestrator.echo", "with": {"x": 1}},
                {"id": "b", "uses": "orchestrator.echo", "with": {"x": 2}},
            ],
        },
    )


def test_second_run_for_the_same_trigger_key_is_refused(task: Task) -> None:
    run_create(task=task, trigger="schedule", trigger_key="schedule:2026-03-29T06:30:00Z")
    with pytest.raises(RunAlreadyExists):
        run_create(task=task, trigger="schedule", trigger_key="schedule:2026-03-29T06:30:00Z")
    assert Run.objects.filter(task=task).count() == 1
    assert StepRun.objects.filter(run__task=task).count() == 2


def test_another_message_finding_a_step_running_leaves_it_alone(task: Task) -> None:
    run = run_create(task=task, trigger="manual")
    StepRun.objects.filter(run=run, index=0).update(status="running", claim_id="message-A", attempts=1)
    Run.objects.filter(pk=run.pk).update(status="running")

    assert step_execute(run_id=str(run.pk), index=0, claim_id="message-B") is Next.STOP

    step = StepRun.objects.get(run=run, index=0)
    assert (step.status, step.attempts, step.claim_id) == ("running", 1, "message-A")


def test_redelivery_of_the_claiming_message_resumes_the_step(task: Task) -> None:
    run = run_create(task=task, trigger="manual")
    StepRun.objects.filter(run=run, index=0).update(status="running", claim_id="message-A", attempts=1)
    Run.objects.filter(pk=run.pk).update(status="running")

    assert step_execute(run_id=str(run.pk), index=0, claim_id="message-A") is Next.CONTINUE

    step = StepRun.objects.get(run=run, index=0)
    assert (step.status, step.attempts, step.output) == ("succeeded", 2, {"x": 1})


def test_done_step_continues_the_chain_only_when_the_next_step_never_started(task: Task) -> None:
    run = run_create(task=task, trigger="manual")
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.CONTINUE
    # The worker died after finishing step 0 but before sending step 1: the redelivery continues.
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.CONTINUE
    assert step_execute(run_id=str(run.pk), index=1, claim_id="m1") is Next.STOP
    # Once step 1 is done, a late copy of step 0 ends its chain.
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.STOP
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.result == {"x": 2}
    assert list(StepRun.objects.filter(run=run).values_list("attempts", flat=True)) == [1, 1]


def test_redelivered_last_step_finishes_a_run_left_running(task: Task) -> None:
    run = run_create(task=task, trigger="manual")
    step_execute(run_id=str(run.pk), index=0, claim_id="m0")
    StepRun.objects.filter(run=run, index=1).update(status="succeeded", output={"x": 2})  # died before run_succeed

    assert step_execute(run_id=str(run.pk), index=1, claim_id="m1") is Next.STOP

    run.refresh_from_db()
    assert (run.status, run.result) == ("succeeded", {"x": 2})


def test_step_of_a_canceled_run_does_not_start(task: Task) -> None:
    run = run_create(task=task, trigger="manual")
    Run.objects.filter(pk=run.pk).update(status="canceled")

    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.STOP
    assert StepRun.objects.get(run=run, index=0).status == "pending"
