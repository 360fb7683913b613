"""The recovery sweeper, in-process: lost publishes and dead workers, parked waits, expired approvals."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import AuditLog
from runs import services
from runs.engine import Next, step_execute
from runs.models import Approval, Run, StepRun
from runs.services import run_create, runs_sweep
from runs.signals import run_finished
from tests.support.pipelines import approval_payload, drive, echo_pipeline, make_task, run_in_process

pytestmark = pytest.mark.django_db

LATER = timedelta(hours=2)


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Chains the services send, recorded instead of published (the sweeper's output)."""
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(services.dispatch, "run_dispatch", lambda **kwargs: sent.append(kwargs))
    return sent


def test_a_queued_run_whose_chain_was_lost_is_dispatched_again(
    agent: Any, dispatched: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    assert runs_sweep() == {"approvals_expired": 0, "runs_recovered": 0}, "not before its deadline"

    with django_capture_on_commit_callbacks(execute=True):
        result = runs_sweep(now=timezone.now() + LATER)

    assert result["runs_recovered"] == 1
    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 0)]
    run.refresh_from_db()
    assert run.deadline_at is not None
    assert run.deadline_at > timezone.now()


def test_a_step_left_running_by_a_dead_worker_is_reset_and_resumed(
    agent: Any, dispatched: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.CONTINUE
    # The worker claims step 1 and dies mid-call.
    services.step_claim(run=run, index=1, claim_id="m1", timeout_s=5)

    with django_capture_on_commit_callbacks(execute=True):
        runs_sweep(now=timezone.now() + LATER)

    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 1)]
    steps = list(StepRun.objects.filter(run=run).order_by("index"))
    assert [(s.status, s.claim_id) for s in steps] == [("succeeded", "m0"), ("pending", ""), ("pending", "")]
    # The new chain's message claims it: a second attempt, the first one recorded as lost.
    drive(run.pk, start=1)
    run.refresh_from_db()
    step = StepRun.objects.get(run=run, index=1)
    assert run.status == "succeeded"
    assert step.attempts == 2
    assert [h["outcome"] for h in step.attempt_history] == ["lost", "succeeded"]
    assert StepRun.objects.get(run=run, index=0).attempts == 1, "a succeeded step is not run again"


def test_a_run_whose_steps_all_finished_is_closed_not_redispatched(agent: Any, dispatched: list[Any]) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    step_execute(run_id=str(run.pk), index=0, claim_id="m0")
    Run.objects.filter(pk=run.pk).update(status="running", finished_at=None, deadline_at=timezone.now())

    runs_sweep(now=timezone.now() + LATER)

    run.refresh_from_db()
    assert (run.status, run.result) == ("succeeded", {"i": 0})
    assert dispatched == []


def test_two_sweeps_at_once_dispatch_a_run_once(
    agent: Any, dispatched: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    later = timezone.now() + LATER
    with django_capture_on_commit_callbacks(execute=True):
        first = runs_sweep(now=later)
        second = runs_sweep(now=later)
    assert (first["runs_recovered"], second["runs_recovered"]) == (1, 0)
    assert len(dispatched) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="row locks with SKIP LOCKED are PostgreSQL's; SQLite serialises writers"
)
def test_a_sweep_skips_a_run_another_transaction_holds_without_waiting(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real concurrency: another connection holds the run's row lock (another sweeper, a
    decision) while a sweep runs in a third thread. SKIP LOCKED: the sweep passes it by at once;
    once the lock is released, the next sweep dispatches it, once."""
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(services.dispatch, "run_dispatch", lambda **kwargs: sent.append(kwargs))
    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    sent.clear()  # its first dispatch (committed at once here): the chain that was "lost"
    later = timezone.now() + LATER
    locked, release = threading.Event(), threading.Event()

    def hold_the_row_lock() -> None:
        try:
            with transaction.atomic():
                Run.objects.select_for_update().get(pk=run.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    def sweep() -> dict[str, int]:
        try:
            return runs_sweep(now=later)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(hold_the_row_lock)
        try:
            assert locked.wait(timeout=10), "the other transaction took the lock"
            started = time.monotonic()
            during = pool.submit(sweep).result(timeout=10)  # a blocked sweep would time out here
            took_s = time.monotonic() - started
        finally:
            release.set()
        holder.result(timeout=10)

    assert during["runs_recovered"] == 0
    assert sent == [], "nothing dispatched while another transaction holds the run"
    assert took_s < 5, f"the sweep waited {took_s:.1f}s for the lock"

    after = runs_sweep(now=later)
    assert after["runs_recovered"] == 1
    assert [(d["run_id"], d["from_index"]) for d in sent] == [(run.pk, 0)]
    assert runs_sweep(now=later)["runs_recovered"] == 0, "its deadline moved on: dispatched once"
    assert len(sent) == 1


def test_a_parked_wait_is_resumed_after_its_time(
    agent: Any, settings: Any, dispatched: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    settings.ORDINAUT_MAX_COUNTDOWN_S = 30
    payload = {
        "pipeline": [
            {"id": "pause", "uses": "orchestrator.wait", "with": {"seconds": 3600}},
            {"id": "after", "uses": "orchestrator.echo", "with": {"waited": "${steps.pause.waited_until}"}},
        ]
    }
    run = run_in_process(agent.agent, payload)
    assert run.status == "running"
    assert runs_sweep()["runs_recovered"] == 0, "parked: nothing to do before its time"

    with django_capture_on_commit_callbacks(execute=True):
        runs_sweep(now=timezone.now() + LATER)
    assert [d["from_index"] for d in dispatched] == [0]

    # The re-dispatched message finds the wait's time passed (pretend an hour went by).
    StepRun.objects.filter(run=run, index=0).update(resume_at=timezone.now() - timedelta(seconds=1))
    drive(run.pk)
    run.refresh_from_db()
    pause = StepRun.objects.get(run=run, index=0)
    assert run.status == "succeeded"
    assert pause.attempts == 1, "resuming a wait is not a new attempt"
    assert (run.result or {})["waited"] == (pause.output or {})["waited_until"]


def test_an_expired_approval_stops_an_unguarded_pipeline_without_failing_it(agent: Any) -> None:
    run = run_in_process(agent.agent, approval_payload(timeout_seconds=60, guarded=False))
    assert runs_sweep()["approvals_expired"] == 0

    assert runs_sweep(now=timezone.now() + LATER)["approvals_expired"] == 1

    run.refresh_from_db()
    assert (run.status, run.error) == ("succeeded", None)
    ask = StepRun.objects.get(run=run, step_id="ask")
    assert (ask.status, (ask.output or {})["status"], (ask.output or {})["decided_by"]) == (
        "succeeded",
        "expired",
        None,
    )
    send = StepRun.objects.get(run=run, step_id="send")
    assert (send.status, send.skip_reason) == ("skipped", "approval_expired")
    assert Approval.objects.get(run=run).status == "expired"
    assert AuditLog.objects.filter(action="approval.expire", subject_id=str(run.pk), actor_kind="system").exists()


def test_an_expired_approval_is_seen_by_the_if_that_tests_it(
    agent: Any, django_capture_on_commit_callbacks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = run_in_process(agent.agent, approval_payload(timeout_seconds=60))
    monkeypatch.setattr(services.dispatch, "run_dispatch", lambda **kwargs: None)
    with django_capture_on_commit_callbacks(execute=True):
        runs_sweep(now=timezone.now() + LATER)
    assert Run.objects.get(pk=run.pk).status == "running"

    drive(run.pk, start=2)

    run.refresh_from_db()
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    assert (run.status, steps["ask"].status, steps["send"].status) == ("succeeded", "succeeded", "skipped")
    assert steps["send"].skip_reason == "condition"


def test_terminal_hook_is_called_for_every_terminal_transition(
    agent: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any, request: Any
) -> None:
    seen: list[tuple[str, str]] = []

    def record(*, run: Run, **_: Any) -> None:
        seen.append((str(run.pk), run.status))

    run_finished.connect(record, dispatch_uid="test-terminal-hook")
    request.addfinalizer(lambda: run_finished.disconnect(dispatch_uid="test-terminal-hook"))
    monkeypatch.setattr(services.dispatch, "run_dispatch", lambda **kwargs: None)

    with django_capture_on_commit_callbacks(execute=True):
        ok = run_in_process(agent.agent, echo_pipeline(1))
        failed = run_in_process(agent.agent, {"pipeline": [{"uses": "nowhere.tool"}]})
        canceled = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
        services.run_cancel(run=canceled, actor=SYSTEM)
        rejected = run_in_process(agent.agent, approval_payload(guarded=False))
        services.approval_decide(run=rejected, approve=False, actor=SYSTEM)
        empty = run_create(task=make_task(agent.agent, {"pipeline": []}), trigger="manual")
        services.run_finish_empty(run_id=empty.pk)

    assert seen == [
        (str(ok.pk), "succeeded"),
        (str(failed.pk), "failed"),
        (str(canceled.pk), "canceled"),
        (str(rejected.pk), "succeeded"),
        (str(empty.pk), "succeeded"),
    ]
