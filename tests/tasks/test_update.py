"""Changing a task from a copy read earlier (an API request, an admin form, an MCP call) keeps what
others committed meanwhile: a pause, a schedule change, beat's cursor, a fire's last_run_at."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from tasks import services
from tasks.models import Task

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def _stale(task: Task) -> Task:
    return Task.objects.get(pk=task.pk)


def test_a_patch_read_before_a_pause_does_not_undo_it(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    patch_read = _stale(task)
    services.task_pause(task=_stale(task), actor=ACTOR)
    services.task_update(task=patch_read, actor=ACTOR, fields={"title": "renamed"})
    task.refresh_from_db()
    assert (task.title, task.status, task.next_run_at) == ("renamed", "paused", None)
    assert task.periodic_task is not None
    assert not task.periodic_task.enabled, "beat still does not fire it"


def test_a_patch_keeps_the_cursor_and_last_run_written_meanwhile(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    patch_read = _stale(task)
    fired_through = timezone.now().replace(microsecond=0) + timedelta(minutes=5)
    Task.objects.filter(pk=task.pk).update(  # what beat and the fire job write
        fired_through=fired_through, next_run_at=fired_through + timedelta(minutes=5), last_run_at=fired_through
    )
    services.task_update(task=patch_read, actor=ACTOR, fields={"jitter_seconds": 3})
    task.refresh_from_db()
    assert task.jitter_seconds == 3
    assert (task.fired_through, task.next_run_at, task.last_run_at) == (
        fired_through,
        fired_through + timedelta(minutes=5),
        fired_through,
    )


def test_a_pause_read_before_a_schedule_change_keeps_the_change(make_task: Any) -> None:
    task = make_task("cron", "*/5 * * * *")
    pause_read = _stale(task)
    changed = services.task_update(task=_stale(task), actor=ACTOR, fields={"schedule_expr": "0 9 * * *"})
    services.task_pause(task=pause_read, actor=ACTOR)
    task.refresh_from_db()
    assert (task.status, task.schedule_expr) == ("paused", "0 9 * * *")
    assert (task.schedule_version, task.fired_through) == (changed.schedule_version, changed.fired_through)


def test_event_tasks_queue_by_default_and_clock_schedules_skip(make_task: Any) -> None:
    assert make_task("event", "mail.*").overlap == Task.Overlap.QUEUE
    assert make_task("cron", "0 9 * * *").overlap == Task.Overlap.SKIP
    assert make_task("event", "mail.*", overlap="skip").overlap == Task.Overlap.SKIP


def test_a_change_of_kind_takes_the_new_kinds_default_unless_overlap_was_chosen(make_task: Any) -> None:
    actor = Actor.system("tests")
    defaulted = make_task("cron", "0 9 * * *")
    chosen = make_task("cron", "0 9 * * *", overlap="allow")

    for task in (defaulted, chosen):
        services.task_update(task=task, actor=actor, fields={"schedule_kind": "event", "schedule_expr": "mail.*"})
        task.refresh_from_db()

    assert defaulted.overlap == Task.Overlap.QUEUE
    assert chosen.overlap == Task.Overlap.ALLOW
    services.task_update(task=defaulted, actor=actor, fields={"schedule_kind": "cron", "schedule_expr": "0 9 * * *"})
    defaulted.refresh_from_db()
    assert defaulted.overlap == Task.Overlap.SKIP
