"""Beat rows follow the task: one PeriodicTask and one schedule row of its own, never shared."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from ordinaut_site.audit import Actor
from tasks import services
from tasks.beat import FIRE_JOB_NAME, NEVER
from tasks.beat_schedule import ScheduleRowError, beat_row_schedule
from tasks.models import RRuleSchedule, Task
from tasks.schedules import occurrences, parse_schedule

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


def _row(task: Task) -> PeriodicTask:
    task.refresh_from_db()
    assert task.periodic_task_id is not None
    return PeriodicTask.objects.get(pk=task.periodic_task_id)


def test_cron_task_owns_a_periodic_task_with_its_own_crontab(make_task: Any) -> None:
    task = make_task("cron", "30 8 * * MON-FRI", "Europe/Chisinau")
    row = _row(task)
    assert row.task == FIRE_JOB_NAME
    assert json.loads(row.kwargs) == {"task_id": str(task.pk)}
    assert row.enabled
    assert row.crontab is not None
    assert (row.crontab.minute, row.crontab.hour, row.crontab.day_of_week) == ("30", "8", "1,2,3,4,5")
    assert str(row.crontab.timezone) == "Europe/Chisinau"
    assert "Monday through Friday" in row.description


def test_two_tasks_with_the_same_cron_never_share_a_schedule_row(make_task: Any) -> None:
    first, second = make_task("cron", "0 9 * * *"), make_task("cron", "0 9 * * *")
    assert _row(first).crontab_id != _row(second).crontab_id
    services.task_delete(task=first, actor=ACTOR)
    assert PeriodicTask.objects.get(pk=_row(second).pk).crontab is not None


def test_each_kind_maps_to_its_dcb_schedule(make_task: Any) -> None:
    interval = _row(make_task("interval", "PT15M"))
    assert (interval.interval.every, interval.interval.period) == (900, IntervalSchedule.SECONDS)
    once = _row(make_task("once", "2030-01-01T09:00:00+02:00"))
    assert once.one_off
    assert once.clocked.clocked_time.isoformat() == "2030-01-01T07:00:00+00:00"
    rrule_task = make_task("rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0", "Europe/Chisinau")
    rrule = _row(rrule_task)
    assert rrule.clocked.clocked_time == NEVER
    stored = RRuleSchedule.objects.get(periodic_task=rrule)
    assert stored.rrule == rrule_task.schedule_expr
    assert stored.timezone == "Europe/Chisinau"
    assert stored.schedule.is_due(rrule_task.created_at)[0] is False


def test_manual_and_event_tasks_have_no_beat_row(make_task: Any) -> None:
    assert make_task("manual", "").periodic_task_id is None
    assert make_task("event", "email.*").periodic_task_id is None


def test_changing_the_kind_swaps_the_schedule_row_and_deletes_the_old_one(make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *")
    old_crontab = _row(task).crontab_id
    services.task_update(task=task, actor=ACTOR, fields={"schedule_kind": "interval", "schedule_expr": "60"})
    row = _row(task)
    assert row.interval is not None
    assert row.crontab is None
    assert not CrontabSchedule.objects.filter(pk=old_crontab).exists()
    services.task_update(task=task, actor=ACTOR, fields={"schedule_kind": "rrule", "schedule_expr": "FREQ=DAILY"})
    assert RRuleSchedule.objects.filter(periodic_task=_row(task)).exists()
    services.task_update(task=task, actor=ACTOR, fields={"schedule_kind": "cron", "schedule_expr": "0 10 * * *"})
    assert not RRuleSchedule.objects.filter(periodic_task=_row(task)).exists()
    assert ClockedSchedule.objects.count() == 0, "the RRULE placeholder clock went with it"


def test_pause_disables_and_resume_enables_the_row(make_task: Any) -> None:
    task = make_task()
    services.task_pause(task=task, actor=ACTOR)
    assert not _row(task).enabled
    assert Task.objects.get(pk=task.pk).next_run_at is None
    services.task_resume(task=task, actor=ACTOR)
    assert _row(task).enabled
    assert Task.objects.get(pk=task.pk).next_run_at is not None


def test_cancel_and_delete_disable_the_row_and_keep_it(make_task: Any) -> None:
    canceled, deleted = make_task(), make_task()
    services.task_cancel(task=canceled, actor=ACTOR)
    services.task_delete(task=deleted, actor=ACTOR)
    assert not _row(canceled).enabled
    assert not _row(deleted).enabled
    assert Task.objects.get(pk=deleted.pk).deleted_at is not None


def test_every_schedule_change_bumps_the_row_so_beat_sees_it(make_task: Any) -> None:
    task = make_task()
    before = _row(task).date_changed
    services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "0 10 * * *"})
    assert _row(task).date_changed > before


@pytest.mark.parametrize(
    ("kind", "expr", "tz"),
    [
        ("cron", "30 8 * * MON-FRI", "Europe/Chisinau"),
        ("cron", "0 9 */2 * MON", "UTC"),  # the star keeps the day-of-month/day-of-week AND rule
        ("cron", "0 9 1,15 * MON", "America/New_York"),  # both restricted: the OR rule
        ("cron", "@hourly", "Asia/Kolkata"),
        ("cron", "*/7 2-3 * JAN,JUL 7", "Europe/London"),
        ("rrule", "FREQ=WEEKLY;BYDAY=MO;BYHOUR=9;BYMINUTE=0", "Europe/Chisinau"),
        ("interval", "PT15M", "UTC"),
        ("once", "2030-01-01T09:00:00+02:00", "Europe/Chisinau"),
    ],
)
def test_the_beat_row_gives_the_occurrences_the_task_says(make_task: Any, kind: str, expr: str, tz: str) -> None:
    """Beat reads the row; the API validated the task's fields: both give the same occurrences."""
    task = make_task(kind, expr, tz)
    row = PeriodicTask.objects.select_related("crontab", "interval", "clocked", "rrule_schedule").get(
        pk=task.periodic_task_id
    )
    from_row = beat_row_schedule(row, task_kind=kind, task_timezone=tz)
    from_task = parse_schedule(kind, task.schedule_expr, tz)
    assert from_task is not None
    after = datetime(2029, 3, 1, tzinfo=UTC)
    assert occurrences(from_row.occurrence, after=after, count=40) == occurrences(from_task, after=after, count=40)
    assert from_row.occurrence.tz == ZoneInfo(tz)


def test_a_beat_row_of_another_kind_than_the_task_is_refused(make_task: Any) -> None:
    task = make_task("rrule", "FREQ=DAILY;BYHOUR=7", "UTC")
    RRuleSchedule.objects.filter(periodic_task_id=task.periodic_task_id).delete()  # only the placeholder clock is left
    row = PeriodicTask.objects.get(pk=task.periodic_task_id)
    with pytest.raises(ScheduleRowError, match="holds a once schedule; the task is rrule"):
        beat_row_schedule(row, task_kind="rrule", task_timezone="UTC")
