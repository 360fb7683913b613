"""The engine's hand-written queries (PostgreSQL) read and write what the ORM would."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from runs.models import Run, StepRun
from runs.selectors import STEP_RUN_FIELDS, STEP_TASK_FIELDS, run_get_for_step
from runs.services import run_create, step_claim, step_succeed
from tests.support.pipelines import echo_pipeline, make_task

pytestmark = pytest.mark.django_db


def test_run_for_step_matches_the_orm(agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(2, params={"n": 1}), timezone="Europe/Chisinau", max_retries=7)
    run = run_create(task=task, trigger="schedule", scheduled_for=datetime(2026, 3, 27, 6, 30, tzinfo=UTC))

    fast = run_get_for_step(run_id=str(run.pk))

    assert fast is not None
    orm = Run.objects.select_related("task").get(pk=run.pk)
    for name in STEP_RUN_FIELDS:
        assert getattr(fast, name) == getattr(orm, name), name
    for name in STEP_TASK_FIELDS:
        assert getattr(fast.task, name) == getattr(orm.task, name), name
    assert fast.lateness_seconds is None
    assert run_get_for_step(run_id="00000000-0000-0000-0000-000000000000") is None


def test_claim_and_success_records_match_the_orm(agent: Any) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")

    claim = step_claim(run=run, index=0, claim_id="m0", timeout_s=10)

    assert claim is not None
    stored = StepRun.objects.get(pk=claim.step.pk)
    for name in ("index", "step_id", "uses", "status", "attempts", "claim_id", "attempt_history", "started_at"):
        assert getattr(claim.step, name) == getattr(stored, name), name
    assert step_claim(run=run, index=0, claim_id="other", timeout_s=10) is None
    assert Run.objects.get(pk=run.pk).current_step == 0

    assert step_succeed(step=claim.step, input=None, output={"a": [1, "x"]}, history=[{"attempt": 1}])
    stored = StepRun.objects.get(pk=claim.step.pk)
    assert (stored.status, stored.input, stored.output, stored.attempt_history) == (
        "succeeded",
        None,
        {"a": [1, "x"]},
        [{"attempt": 1}],
    )
    assert StepRun.objects.filter(pk=stored.pk, input__isnull=True).exists(), "None is SQL NULL, as the ORM stores it"
    assert not step_succeed(step=claim.step, input=None, output=None, history=[]), "only once"


def test_an_attempt_whose_worker_died_keeps_its_start_time_in_the_history(agent: Any) -> None:
    """The claim writes the attempt's start; an attempt never ended reads as lost, with it."""
    from runs.engine import step_execute

    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    lost = step_claim(run=run, index=0, claim_id="dies", timeout_s=10)
    assert lost is not None
    assert StepRun.objects.get(pk=lost.step.pk).attempt_history == [
        {"attempt": 1, "started_at": lost.at.isoformat(), "outcome": "running"}
    ]
    StepRun.objects.filter(pk=lost.step.pk).update(status="pending", claim_id="")  # the sweeper's reset

    step_execute(run_id=str(run.pk), index=0, claim_id="again")

    step = StepRun.objects.get(pk=lost.step.pk)
    first, second = step.attempt_history
    assert (first["attempt"], first["outcome"], first["started_at"]) == (1, "lost", lost.at.isoformat())
    assert (second["attempt"], second["outcome"]) == (2, "succeeded")
    assert second["started_at"] > first["started_at"]
