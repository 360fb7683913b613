"""PostgreSQL: a step job whose message carries its timeout claims its step and loads its run in
one statement (runs/services/steps.py step_claim_loaded), so a plain step costs two statements:
that one and its success."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from runs.engine import Next, step_execute
from runs.models import Run, StepRun
from runs.selectors import STEP_TASK_FIELDS, run_get_for_step
from runs.services import logical_now, run_create, step_claim, step_claim_loaded
from runs.services.steps import claim_fetch
from tests.support.pipelines import echo_pipeline, make_task

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-statement claim is PostgreSQL's"),
]

# Whole-hour, half-hour and 45-minute offsets, both signs, and zones around their DST changes.
ZONES = ["UTC", "Europe/Chisinau", "America/New_York", "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns"]
INSTANTS = [
    datetime(2026, 3, 29, 0, 59, 59, 999_999, tzinfo=UTC),  # Chisinau springs forward at 01:00 UTC
    datetime(2026, 3, 29, 1, 0, 0, 500_000, tzinfo=UTC),
    datetime(2026, 11, 1, 5, 59, 59, tzinfo=UTC),  # New York falls back at 06:00 UTC
    datetime(2026, 11, 1, 6, 0, 1, tzinfo=UTC),
    datetime(2026, 12, 4, 14, 30, 15, 123_456, tzinfo=UTC),
]


@pytest.mark.parametrize("zone", ZONES)
def test_the_claim_writes_the_runs_now_as_logical_now_does(agent: Any, zone: str, monkeypatch: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(1), timezone=zone)
    for at in INSTANTS:
        run = run_create(task=task, trigger="manual")
        assert (run.context or {}).get("now") is None  # a manual run's now is when it starts
        monkeypatch.setattr("runs.services.steps.timezone.now", lambda at=at: at)

        loaded = step_claim_loaded(run_id=str(run.pk), index=0, claim_id=f"m-{at}", timeout_s=10)

        assert loaded is not None
        claimed_run, claim = loaded
        assert claim is not None
        assert claim.at == at
        expected = logical_now(task, at)
        assert claimed_run.context["now"] == expected, (zone, at)
        assert Run.objects.get(pk=run.pk).context["now"] == expected


def test_the_claim_and_the_load_match_the_two_statement_path(agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(2, params={"n": 1}), timezone="Europe/Chisinau", max_retries=4)
    run = run_create(task=task, trigger="schedule", scheduled_for=datetime(2026, 3, 27, 6, 30, tzinfo=UTC))
    before = run_get_for_step(run_id=str(run.pk))
    assert before is not None
    assert before.status == Run.Status.QUEUED

    loaded = step_claim_loaded(run_id=str(run.pk), index=0, claim_id="m0", timeout_s=30)

    assert loaded is not None
    claimed_run, claim = loaded
    assert claim is not None
    assert claim.started_run
    after = run_get_for_step(run_id=str(run.pk))
    assert after is not None
    for name in ("id", "task_id", "trigger", "trigger_key", "scheduled_for", "status", "started_at", "context"):
        assert getattr(claimed_run, name) == getattr(after, name), name
    for name in STEP_TASK_FIELDS:
        assert getattr(claimed_run.task, name) == getattr(after.task, name), name
    assert claimed_run.context["now"] == before.context["now"], "a scheduled run keeps its instant's now"
    stored = StepRun.objects.get(pk=claim.step.pk)
    for name in ("index", "step_id", "uses", "status", "attempts", "claim_id", "attempt_history", "started_at"):
        assert getattr(claim.step, name) == getattr(stored, name), name
    assert stored.attempt_history == [{"attempt": 1, "started_at": claim.at.isoformat(), "outcome": "running"}]
    deadline = Run.objects.get(pk=run.pk).deadline_at
    assert deadline is not None
    assert deadline - claim.at >= timedelta(seconds=30)

    # The same message again resumes its claim; another message gets the run and no claim.
    again = step_claim_loaded(run_id=str(run.pk), index=0, claim_id="m0", timeout_s=30)
    assert again is not None
    assert again[1] is not None
    assert not again[1].started_run
    other = step_claim_loaded(run_id=str(run.pk), index=0, claim_id="other", timeout_s=30)
    assert other is not None
    assert other[1] is None
    assert other[0].status == Run.Status.RUNNING
    assert step_claim_loaded(run_id="00000000-0000-0000-0000-000000000000", index=0, claim_id="x", timeout_s=1) is None


def test_a_scheduled_run_is_loaded_and_not_claimed(agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(1))
    run = run_create(task=task, trigger="schedule", scheduled_for=timezone.now() - timedelta(seconds=1))
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SCHEDULED)

    loaded = step_claim_loaded(run_id=str(run.pk), index=0, claim_id="early", timeout_s=10)

    assert loaded is not None
    assert loaded[1] is None
    assert loaded[0].status == Run.Status.SCHEDULED
    assert StepRun.objects.get(run=run, index=0).status == StepRun.Status.PENDING
    # The engine then decides at the instant (it came: the run starts), and claims.
    assert step_execute(run_id=str(run.pk), index=0, claim_id="early", timeout_s=10) is Next.STOP
    decided = Run.objects.get(pk=run.pk)
    # A manual task has no schedule that holds this instant: the engine had the owner decide.
    assert (decided.status, decided.skip_reason) == (Run.Status.SKIPPED, "rescheduled")


def _statements(queries: CaptureQueriesContext) -> list[str]:
    """What the step sent, without the savepoints the test's own transaction makes it take."""
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]


def test_a_step_job_with_its_timeout_costs_two_statements(agent: Any) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")

    counts = []
    for index in range(3):
        with CaptureQueriesContext(connection) as queries:
            outcome = step_execute(run_id=str(run.pk), index=index, claim_id=f"m{index}", timeout_s=30)
        counts.append(len(_statements(queries)))
        assert outcome is (Next.CONTINUE if index < 2 else Next.STOP)

    # step 0 and 1: claim+load, success; step 2: claim+load, success of the step and the run.
    assert counts == [2, 2, 2], counts
    stored = Run.objects.get(pk=run.pk)
    assert stored.status == Run.Status.SUCCEEDED
    assert [s.status for s in stored.steps.order_by("index")] == ["succeeded"] * 3


def test_without_its_timeout_a_step_job_loads_then_claims(agent: Any) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    with CaptureQueriesContext(connection) as queries:
        step_execute(run_id=str(run.pk), index=0, claim_id="m0")
    assert len(_statements(queries)) == 3
    assert Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED


def test_a_redelivered_message_after_the_step_succeeded_continues_the_chain_once(agent: Any) -> None:
    """The original message died after its step succeeded, before the rest of the chain was
    sent: its redelivery (another claim id, from the sweeper) continues the chain."""
    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0", timeout_s=10) is Next.CONTINUE

    assert step_execute(run_id=str(run.pk), index=0, claim_id="again", timeout_s=10) is Next.CONTINUE
    claim = step_claim(run=Run.objects.get(pk=run.pk), index=1, claim_id="m1", timeout_s=10)
    assert claim is not None
    assert step_execute(run_id=str(run.pk), index=0, claim_id="third", timeout_s=10) is Next.STOP


@pytest.mark.django_db(transaction=True)
def test_a_claim_in_autocommit_does_not_wait_for_the_wal_flush(agent: Any) -> None:
    """Only the claim's own commit skips the wait: the success after it waits (and flushes both)."""
    setting = "SELECT current_setting('synchronous_commit')"
    assert claim_fetch(setting, {}) == ("off",)
    with connection.cursor() as cursor:
        cursor.execute(setting)
        assert cursor.fetchone() == ("on",), "SET LOCAL held for the claim's statement alone"
    with transaction.atomic():
        assert claim_fetch(setting, {}) == ("on",), "inside a transaction it would hold for the rest of it"

    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    with CaptureQueriesContext(connection) as queries:
        assert step_execute(run_id=str(run.pk), index=0, claim_id="m0", timeout_s=10) is Next.CONTINUE
        assert step_execute(run_id=str(run.pk), index=1, claim_id="m1", timeout_s=10) is Next.STOP
    claim, success, last_claim, run_success = (query["sql"] for query in queries.captured_queries)
    assert claim.startswith("SET LOCAL synchronous_commit = off;")
    assert success.startswith("SET LOCAL synchronous_commit = off;"), "a step that is not the last"
    assert last_claim.startswith("SET LOCAL synchronous_commit = off;")
    assert "synchronous_commit" not in run_success, "the run's end waits for the flush"
    assert Run.objects.get(pk=run.pk).status == Run.Status.SUCCEEDED


@pytest.mark.parametrize("timeout_s", [10.0, None])
def test_a_step_is_not_claimed_while_the_step_before_it_is_not_done(agent: Any, timeout_s: float | None) -> None:
    """As after a database crash lost a success whose next message had been sent: that message
    stops the chain; the step's own re-run (the sweeper's) goes on from there."""
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    first = step_claim(run=run, index=0, claim_id="m0", timeout_s=10)
    assert first is not None

    assert step_execute(run_id=str(run.pk), index=1, claim_id="m1", timeout_s=timeout_s) is Next.STOP
    assert StepRun.objects.get(run=run, index=1).status == StepRun.Status.PENDING

    StepRun.objects.filter(pk=first.step.pk).update(status=StepRun.Status.PENDING, claim_id="")  # the sweeper's reset
    assert step_execute(run_id=str(run.pk), index=0, claim_id="again", timeout_s=timeout_s) is Next.CONTINUE
    assert step_execute(run_id=str(run.pk), index=1, claim_id="m1", timeout_s=timeout_s) is Next.CONTINUE
    assert StepRun.objects.get(run=run, index=1).status == StepRun.Status.SUCCEEDED
