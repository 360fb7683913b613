"""Dispatch ahead of time (ORDINAUT_DISPATCH_LEAD_S): an occurrence fired before its instant is
created scheduled with its first step sent for the instant; what depends on the instant (pause,
snooze, deletion, owner, schedule changes, condition, overlap) is decided when that step starts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from ordinaut_site.models import Agent
from runs.models import Run, StepRun
from runs.services import run_cancel, run_fail, run_on_terminal, runs_sweep
from tasks import services
from tasks.models import Task
from tests.support.pipelines import drive

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
LEAD_S = 2.0


def _instant(task: Task) -> Any:
    task.refresh_from_db()
    assert task.next_run_at is not None
    return task.next_run_at


def _fired_ahead(task: Task, *, by_s: float = 1.5) -> Run:
    at = _instant(task)
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at - timedelta(seconds=by_s))
    assert run is not None
    return run


def _started(run: Run) -> Run:
    drive(run.pk)
    return Run.objects.get(pk=run.pk)


@pytest.fixture
def sent(monkeypatch: Any) -> list[dict[str, Any]]:
    """The chains sent to the broker (after commit), recorded instead."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("runs.services.dispatch.run_dispatch", lambda **kwargs: calls.append(kwargs))
    return calls


def test_fired_ahead_the_run_is_scheduled_and_its_first_step_sent_for_the_instant(
    make_task: Any, sent: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    task = make_task("cron", "*/5 * * * *", jitter_seconds=0)
    with django_capture_on_commit_callbacks(execute=True):
        run = _fired_ahead(task, by_s=1.5)

    assert run.status == "scheduled"
    assert run.skip_reason == ""
    assert run.deadline_at is not None
    assert run.scheduled_for is not None
    assert run.deadline_at > run.scheduled_for, "the sweeper waits past the instant"
    [chain] = sent
    assert chain["from_index"] == 0
    assert chain["countdown"] == pytest.approx(1.5, abs=0.01), "the first step's ETA is the instant"
    assert services.task_fire(task_id=task.pk, scheduled_for=run.scheduled_for, now=timezone.now()) is None, (
        "the occurrence has its run: firing it again creates nothing"
    )


def test_at_its_instant_it_starts_and_runs(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    run = _started(_fired_ahead(task))

    assert run.status == "succeeded"
    assert run.started_at is not None
    assert StepRun.objects.get(run=run).status == "succeeded"


def test_fired_further_ahead_than_the_lead_it_runs_as_due_now(make_task: Any) -> None:
    """Clocks that disagree by more than the lead: as without one, the run is queued at once."""
    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task, by_s=LEAD_S + 60)
    assert run.status == "queued"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda task: services.task_pause(task=task, actor=ACTOR), "paused"),
        (lambda task: services.task_cancel(task=task, actor=ACTOR), "canceled"),
        (lambda task: services.task_delete(task=task, actor=ACTOR), "deleted"),
        (lambda task: Agent.objects.filter(pk=task.owner_id).update(is_active=False), "owner_inactive"),
        (
            lambda task: services.task_snooze(task=task, actor=ACTOR, until=_instant_of(task) + timedelta(minutes=1)),
            "snoozed",
        ),
        (
            lambda task: services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "0 0 29 2 *"}),
            "rescheduled",
        ),
    ],
    ids=["paused", "canceled", "deleted", "owner-deactivated", "snoozed", "rescheduled"],
)
def test_what_changed_before_the_instant_skips_the_run_with_the_reason(
    make_task: Any, change: Any, reason: str
) -> None:
    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task)
    change(Task.objects.get(pk=task.pk))

    run = _started(run)

    assert (run.status, run.skip_reason) == ("skipped", reason)
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts) == ("skipped", 0), "no step ran"


def _instant_of(task: Task) -> Any:
    run = Run.objects.filter(task=task).order_by("-scheduled_for").first()
    assert run is not None
    return run.scheduled_for


def test_the_condition_is_evaluated_at_the_instant(make_task: Any) -> None:
    pipeline = [{"id": "a", "uses": "orchestrator.echo", "with": {}}]
    task = make_task(
        "cron", "*/5 * * * *", condition="task.params.go", payload={"params": {"go": True}, "pipeline": pipeline}
    )
    run = _fired_ahead(task)
    Task.objects.filter(pk=task.pk).update(payload={"params": {"go": False}, "pipeline": pipeline})

    run = _started(run)

    assert (run.status, run.skip_reason) == ("skipped", "condition")


def test_overlap_is_decided_against_the_runs_active_at_the_instant(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="skip")
    at = _instant(task)
    earlier = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert earlier is not None
    later = services.task_fire(
        task_id=task.pk, scheduled_for=at + timedelta(minutes=5), now=at + timedelta(minutes=5) - timedelta(seconds=1)
    )
    assert later is not None
    assert later.status == "scheduled", "not decided at dispatch"

    later = _started(later)

    assert (later.status, later.skip_reason) == ("skipped", "overlap")


def test_overlap_cancel_previous_cancels_the_run_active_at_the_instant_and_starts(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="cancel_previous")
    at = _instant(task)
    earlier = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    later = services.task_fire(
        task_id=task.pk, scheduled_for=at + timedelta(minutes=5), now=at + timedelta(minutes=5) - timedelta(seconds=1)
    )
    assert earlier is not None
    assert later is not None
    assert later.status == "scheduled"

    later = _started(later)

    assert Run.objects.get(pk=earlier.pk).status == "canceled"
    assert later.status == "succeeded"


def test_overlap_allows_nothing_else_when_no_run_is_active_at_the_instant(make_task: Any) -> None:
    for overlap in ("skip", "queue", "cancel_previous"):
        task = make_task("cron", "*/5 * * * *", overlap=overlap)
        run = _started(_fired_ahead(task))
        assert (overlap, run.status) == (overlap, "succeeded")


def test_overlap_queue_holds_it_at_the_instant_and_releases_it_after_the_one_before(
    make_task: Any, django_capture_on_commit_callbacks: Any, sent: list[dict[str, Any]]
) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="queue")
    at = _instant(task)
    first = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    second = services.task_fire(
        task_id=task.pk, scheduled_for=at + timedelta(minutes=5), now=at + timedelta(seconds=299)
    )
    assert first is not None
    assert second is not None

    second = _started(second)
    assert (second.status, second.deadline_at, second.dispatch_count) == ("queued", None, 0), "held for its turn"

    sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        run_fail(run=Run.objects.get(pk=first.pk), error={"code": "x", "message": "y"}, from_status="queued")
        run_on_terminal(run=first)
    second.refresh_from_db()
    assert second.deadline_at is not None, "released"
    assert [chain["run_id"] for chain in sent] == [second.pk]


def test_a_scheduled_run_can_be_canceled_and_then_never_starts(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task)

    run_cancel(run=run, actor=ACTOR)
    run = _started(run)

    assert run.status == "canceled"
    assert StepRun.objects.get(run=run).status == "pending", "its step never started"


def test_a_scheduled_run_whose_message_was_lost_is_sent_again_by_the_sweeper(
    make_task: Any, sent: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task)
    assert run.deadline_at is not None

    with django_capture_on_commit_callbacks(execute=True):
        result = runs_sweep(now=run.deadline_at + timedelta(seconds=1))

    assert result["runs_recovered"] == 1
    assert [chain["run_id"] for chain in sent] == [run.pk]
    assert _started(run).status == "succeeded"


def _run_reads(captured: Any) -> list[str]:
    """SELECTs of a run's status alone (the re-read run_due makes when no transition of its own won)."""
    reread = 'SELECT "runs_run"."status" AS "status", "runs_run"."skip_reason" AS "skip_reason"'
    return [q["sql"] for q in captured.captured_queries if q["sql"].startswith(reread)]


def test_the_first_step_of_a_scheduled_run_starts_it_without_reading_the_run_again(make_task: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs.engine import Next, step_execute

    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task)
    with CaptureQueriesContext(connection) as captured:
        outcome = step_execute(run_id=str(run.pk), index=0, claim_id="first", timeout_s=60)

    assert outcome is Next.STOP, "a one-step run ends with its step"
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert _run_reads(captured) == [], "the decision's own transition told the run what it became"


def test_a_scheduled_run_canceled_while_its_start_is_decided_does_not_start(make_task: Any, monkeypatch: Any) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from runs.engine import Next, step_execute
    from runs.services import state

    task = make_task("cron", "*/5 * * * *")
    run = _fired_ahead(task)

    def start_after_a_cancel(*, run: Run) -> bool:
        run_cancel(run=Run.objects.get(pk=run.pk), actor=ACTOR)  # another process, in between
        return state.run_scheduled_start(run=run)

    monkeypatch.setattr(services, "run_scheduled_start", start_after_a_cancel)
    with CaptureQueriesContext(connection) as captured:
        outcome = step_execute(run_id=str(run.pk), index=0, claim_id="first", timeout_s=60)

    assert outcome is Next.STOP
    assert len(_run_reads(captured)) == 1, "its transition lost: what the run is now is read"
    assert Run.objects.get(pk=run.pk).status == "canceled"
    assert StepRun.objects.get(run=run).status == "pending", "its step never started"
