"""Firing one occurrence: exactly one run per occurrence, and skipped runs that say why."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from ordinaut_site.models import AuditLog
from runs.models import Run
from runs.services import run_fail, run_on_terminal
from tasks import services
from tasks.models import Task

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def fired(task: Task, at: datetime) -> Run:
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert run is not None, "the occurrence created a run"
    return run


def _occurrence(task: Task) -> datetime:
    task.refresh_from_db()
    assert task.next_run_at is not None
    return task.next_run_at


def test_an_occurrence_creates_one_run_keyed_by_its_nominal_time(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    at = _occurrence(task)
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert run is not None
    assert (run.trigger, run.status, run.scheduled_for) == ("schedule", "queued", at)
    assert run.trigger_key == "schedule:" + at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert Task.objects.get(pk=task.pk).last_run_at == at


def test_a_second_delivery_of_the_same_occurrence_creates_nothing(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    at = _occurrence(task)
    services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert services.task_fire(task_id=task.pk, scheduled_for=at, now=at + timedelta(seconds=3)) is None
    assert Run.objects.filter(task=task).count() == 1


def test_occurrence_older_than_the_catchup_window_is_skipped_missed(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", catchup_window_seconds=120)
    at = _occurrence(task)
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at + timedelta(seconds=121))
    assert run is not None
    assert (run.status, run.skip_reason) == ("skipped", "missed")
    assert not run.steps.exists()


def test_condition_false_records_a_skipped_run(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", condition="task.params.enabled")
    at = _occurrence(task)
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert run is not None
    assert (run.status, run.skip_reason) == ("skipped", "condition")


def test_condition_sees_the_last_run(make_task: Any) -> None:
    task = make_task(
        "cron",
        "*/5 * * * *",
        condition="last_run == null || last_run.status == 'succeeded'",
        payload={"params": {"enabled": True}, "pipeline": []},
    )
    first = _occurrence(task)
    assert fired(task, first).status == "queued"
    Run.objects.filter(task=task).update(status="failed")
    second = first + timedelta(minutes=5)
    assert fired(task, second).skip_reason == "condition"


def test_overlap_skip_records_a_skipped_run_while_the_previous_is_active(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    first = _occurrence(task)
    services.task_fire(task_id=task.pk, scheduled_for=first, now=first)
    second = first + timedelta(minutes=5)
    run = services.task_fire(task_id=task.pk, scheduled_for=second, now=second)
    assert run is not None
    assert (run.status, run.skip_reason) == ("skipped", "overlap")


def test_overlap_allow_runs_both(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="allow")
    first = _occurrence(task)
    services.task_fire(task_id=task.pk, scheduled_for=first, now=first)
    second = first + timedelta(minutes=5)
    assert fired(task, second).status == "queued"


def test_once_task_completes_after_its_run(make_task: Any) -> None:
    at = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    task = make_task("once", at.isoformat())
    run = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
    assert run is not None
    assert run.status == "queued"
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("completed", None)
    assert not task.periodic_task.enabled
    assert AuditLog.objects.filter(action="task.complete", subject_id=str(task.pk)).exists()


def test_count_exhaustion_completes_the_task(make_task: Any) -> None:
    start = (timezone.now() + timedelta(days=1)).astimezone(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    task = make_task("rrule", f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;COUNT=2")
    services.task_fire(task_id=task.pk, scheduled_for=start, now=start)
    assert Task.objects.get(pk=task.pk).status == "active"
    services.task_fire(task_id=task.pk, scheduled_for=start + timedelta(days=1), now=start + timedelta(days=1))
    assert Task.objects.get(pk=task.pk).status == "completed"


def test_until_exhaustion_completes_the_task(make_task: Any) -> None:
    start = (timezone.now() + timedelta(days=1)).astimezone(UTC).replace(hour=9, minute=0, second=0, microsecond=0)
    last = start + timedelta(days=1)
    task = make_task(
        "rrule", f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;UNTIL={last:%Y%m%dT%H%M%SZ}", overlap="allow"
    )
    fired(task, start)
    assert Task.objects.get(pk=task.pk).status == "active"
    assert fired(task, last).status == "queued", "UNTIL is inclusive: its own instant still runs"
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("completed", None)
    assert not task.periodic_task.enabled
    assert AuditLog.objects.filter(action="task.complete", subject_id=str(task.pk)).exists()


def test_paused_task_does_not_fire(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    at = _occurrence(task)
    services.task_pause(task=task, actor=ACTOR)
    assert services.task_fire(task_id=task.pk, scheduled_for=at, now=at) is None
    assert not Run.objects.filter(task=task).exists()


def test_snooze_delays_the_next_run_and_skips_what_it_covers(make_task: Any) -> None:
    task = make_task("cron", "*/10 * * * *")
    first = _occurrence(task)
    services.task_snooze(task=task, actor=ACTOR, delay_seconds=25 * 60, reason="busy")
    task.refresh_from_db()
    wake = first + timedelta(minutes=25)
    assert (task.snoozed_until, task.next_run_at) == (wake, wake)
    covered = [first, first + timedelta(minutes=10), first + timedelta(minutes=20)]
    for at in covered:
        skipped = services.task_fire(task_id=task.pk, scheduled_for=at, now=at)
        assert skipped is not None
        assert skipped.skip_reason == "snoozed"
    woken = services.task_fire(task_id=task.pk, scheduled_for=wake, now=wake)
    assert woken is not None
    assert woken.status == "queued"
    after = first + timedelta(minutes=30)
    late = services.task_fire(task_id=task.pk, scheduled_for=after, now=after)
    assert late is not None
    assert late.skip_reason == "overlap"


def test_record_missed_is_bulk_and_idempotent(make_task: Any) -> None:
    task = make_task("cron", "* * * * *")
    base = _occurrence(task) - timedelta(days=1)
    occurrences = [base + timedelta(minutes=i) for i in range(50)]
    assert services.task_record_missed(task_id=task.pk, occurrences=occurrences) == 50
    assert services.task_record_missed(task_id=task.pk, occurrences=occurrences) == 0
    assert Run.objects.filter(task=task, status="skipped", skip_reason="missed").count() == 50


def test_overlap_queue_holds_the_run_until_the_previous_one_ends(
    make_task: Any, django_capture_on_commit_callbacks: Any
) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="queue")
    first_at = _occurrence(task)
    first = fired(task, first_at)
    second = fired(task, first_at + timedelta(minutes=5))
    third = fired(task, first_at + timedelta(minutes=10))
    assert (second.status, second.deadline_at) == ("queued", None), "held: queued, not dispatched"
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run_fail(run=Run.objects.get(pk=first.pk), error={"code": "x", "message": "y"}, from_status="queued")
        run_on_terminal(run=first)
    assert callbacks, "the next run was dispatched after commit"
    second.refresh_from_db()
    third.refresh_from_db()
    assert second.deadline_at is not None, "the oldest waiting run was released"
    assert third.deadline_at is None, "one at a time"


def test_overlap_cancel_previous_cancels_the_running_one(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", overlap="cancel_previous")
    first_at = _occurrence(task)
    first = fired(task, first_at)
    second = fired(task, first_at + timedelta(minutes=5))
    first.refresh_from_db()
    assert first.status == "canceled"
    assert second.status == "queued"
    assert second.deadline_at is not None


def test_jitter_is_recorded_on_the_run(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *", jitter_seconds=30, overlap="allow")
    at = _occurrence(task)
    jitters = {fired(task, at + timedelta(minutes=5 * i)).jitter_seconds for i in range(6)}
    assert all(0 <= j <= 30 for j in jitters)
    assert len(jitters) > 1, "a random delay, not a constant"


def test_a_batch_fires_each_occurrence_and_a_bad_one_does_not_stop_the_others(make_task: Any) -> None:
    first, second = make_task("cron", "*/5 * * * *"), make_task("cron", "*/5 * * * *")
    at = _occurrence(first)
    again = services.task_fire_batch(occurrences=[(first.pk, at), ("not-a-task-id", at), (second.pk, at)])
    assert again == []
    assert Run.objects.filter(task__in=[first, second], scheduled_for=at).count() == 2
    assert services.task_fire_batch(occurrences=[(first.pk, at)]) == []
    assert Run.objects.filter(task=first).count() == 1, "a redelivered batch creates nothing new"
