"""django-celery-beat's change marker: not touched by task writes unless ORDINAUT_BEAT_CHANGE_MARKER,
and then bumped once per transaction, after commit, never locked inside a task write, so the stock
DatabaseScheduler still sees every change; the beat rows are written without dcb's
name-uniqueness query (tasks/beat.py)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks
from django_celery_beat.schedulers import DatabaseScheduler

from ordinaut_site.audit import Actor
from ordinaut_site.celery import app
from tasks import services
from tasks.beat import _marker_bump, beat_rows_sync
from tasks.models import Task

ACTOR = Actor.system("tests")
MARKER_TABLE = PeriodicTasks._meta.db_table


@pytest.fixture
def marker_on(settings: Any) -> None:
    settings.ORDINAUT_BEAT_CHANGE_MARKER = True


def _statements(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]


def _marker_callbacks(callbacks: list[Any]) -> int:
    return sum(1 for callback in callbacks if callback is _marker_bump)


@pytest.mark.django_db
def test_a_task_create_bumps_the_marker_once_after_commit_and_never_inside(
    marker_on: None, make_task: Any, django_capture_on_commit_callbacks: Any
) -> None:
    PeriodicTasks.update_changed()
    before = PeriodicTasks.last_change()
    with CaptureQueriesContext(connection) as inside, django_capture_on_commit_callbacks() as callbacks:
        make_task("cron", "0 9 * * 1-5", "Europe/Chisinau")
    assert not [sql for sql in _statements(inside) if MARKER_TABLE in sql], "the marker row is not touched (or locked)"
    assert _marker_callbacks(callbacks) == 1

    with CaptureQueriesContext(connection) as after:
        for callback in callbacks:
            callback()
    marker = [sql for sql in _statements(after) if MARKER_TABLE in sql]
    assert len(marker) == 1
    assert marker[0].startswith("UPDATE")
    assert "FOR UPDATE" not in marker[0]
    last = PeriodicTasks.last_change()
    assert before is not None
    assert last is not None
    assert last > before


@pytest.mark.django_db
def test_the_marker_row_is_created_when_dcb_never_wrote_it(
    marker_on: None, make_task: Any, django_capture_on_commit_callbacks: Any
) -> None:
    PeriodicTasks.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        make_task()
    assert PeriodicTasks.last_change() is not None


@pytest.mark.django_db
def test_many_beat_writes_in_one_transaction_bump_the_marker_once(
    marker_on: None, make_task: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as callbacks, transaction.atomic():
        task = make_task()
        services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "0 10 * * *"})
        services.task_pause(task=task, actor=ACTOR)
        make_task("interval", "PT5M")
    assert _marker_callbacks(callbacks) == 1


@pytest.mark.django_db(transaction=True)
def test_a_write_after_a_rolled_back_one_still_bumps_the_marker(marker_on: None, make_task: Any) -> None:
    """The rolled-back savepoint takes its bump with it; the write that commits bumps again."""
    task = make_task()
    before = PeriodicTasks.last_change()
    with transaction.atomic():
        try:
            with transaction.atomic():
                beat_rows_sync(task)
                raise RuntimeError("rolled back")
        except RuntimeError:
            pass
        services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "0 11 * * *"})
    last = PeriodicTasks.last_change()
    assert before is not None
    assert last is not None
    assert last > before


@pytest.mark.django_db
def test_by_default_task_writes_leave_the_marker_alone(make_task: Any, django_capture_on_commit_callbacks: Any) -> None:
    with CaptureQueriesContext(connection) as captured, django_capture_on_commit_callbacks(execute=True) as callbacks:
        task = make_task()
        services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "0 10 * * *"})
        services.task_pause(task=task, actor=ACTOR)
    assert _marker_callbacks(callbacks) == 0
    assert not [sql for sql in _statements(captured) if MARKER_TABLE in sql]


@pytest.mark.django_db
def test_a_new_cron_task_writes_its_beat_rows_in_three_statements(make_task: Any) -> None:
    """Its crontab and PeriodicTask rows, and the task's link to them: no query of the name's
    uniqueness (dcb's validate_unique), no marker, nothing to delete."""
    task = Task.objects.get(pk=make_task("manual", "").pk)
    task.schedule_kind, task.schedule_expr = Task.Kind.CRON, "0 9 * * *"
    with CaptureQueriesContext(connection) as captured:
        beat_rows_sync(task)
    statements = _statements(captured)
    assert [sql.split(" ", 1)[0] for sql in statements] == ["INSERT", "INSERT", "UPDATE"], statements
    assert CrontabSchedule._meta.db_table in statements[0]
    assert PeriodicTask._meta.db_table in statements[1]


@pytest.mark.django_db
def test_an_unsaved_task_gets_its_row_without_an_update(make_task: Any) -> None:
    """beat_rows_sync before the task's INSERT: the INSERT carries periodic_task."""
    template = make_task()
    task = Task(owner=template.owner, title="later", schedule_kind="cron", schedule_expr="5 9 * * *", timezone="UTC")
    task.payload = template.payload
    with CaptureQueriesContext(connection) as captured:
        periodic = beat_rows_sync(task)
    assert not [sql for sql in _statements(captured) if sql.startswith("UPDATE")]
    assert periodic is not None
    assert task.periodic_task_id == periodic.pk
    task.save()
    assert Task.objects.get(pk=task.pk).periodic_task_id == periodic.pk


@pytest.mark.django_db
def test_an_edit_writes_only_the_schedule_fields_that_changed(make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *", "UTC")
    crontab = PeriodicTask.objects.get(pk=task.periodic_task_id).crontab
    assert crontab is not None
    with CaptureQueriesContext(connection) as same:
        services.task_update(task=task, actor=ACTOR, fields={"title": "renamed"})
    assert not [sql for sql in _statements(same) if sql.startswith("UPDATE") and CrontabSchedule._meta.db_table in sql]

    services.task_update(task=task, actor=ACTOR, fields={"timezone": "Europe/Chisinau"})
    crontab.refresh_from_db()
    assert str(crontab.timezone) == "Europe/Chisinau"
    services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "15 7 * * *"})
    crontab.refresh_from_db()
    assert (crontab.minute, crontab.hour, str(crontab.timezone)) == ("15", "7", "Europe/Chisinau")


@pytest.mark.django_db(transaction=True)
def test_the_stock_database_scheduler_still_sees_every_change(marker_on: None, make_task: Any) -> None:
    """django-celery-beat's own DatabaseScheduler reloads when the marker moves (B3's baseline,
    tests/perf/bench_scheduler.py, and any operator running it): a create, an edit and a pause
    each move it, once committed."""
    PeriodicTasks.update_changed()  # dcb sees a change only once it has read a marker before
    scheduler = DatabaseScheduler(app=app, lazy=True)
    scheduler.schedule_changed()  # reads the marker as it is now
    task = make_task()
    assert scheduler.schedule_changed(), "a created task"
    assert not scheduler.schedule_changed(), "nothing since"
    services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "30 6 * * *"})
    assert scheduler.schedule_changed(), "an edit"
    services.task_pause(task=task, actor=ACTOR)
    assert scheduler.schedule_changed(), "a pause"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "expr"), [("cron", "0 9 * * 1-5"), ("rrule", "FREQ=DAILY;BYHOUR=8"), ("once", "2030-01-01T09:00:00Z")]
)
def test_a_task_create_inserts_the_task_with_its_beat_row_and_never_updates_it(
    make_task: Any, kind: str, expr: str
) -> None:
    with CaptureQueriesContext(connection) as captured:
        task = make_task(kind, expr, "Europe/Chisinau")
    task_writes = [sql for sql in _statements(captured) if Task._meta.db_table in sql.split("(")[0]]
    assert [sql.split()[0] for sql in task_writes] == ["INSERT"], task_writes
    stored = Task.objects.get(pk=task.pk)
    assert stored.periodic_task_id is not None
    assert PeriodicTask.objects.get(pk=stored.periodic_task_id).enabled
