"""What beat's load costs, bounded (B3 at 100,000 tasks, docs/benchmarks.md): tasks with the same
schedule share one parsed schedule, the row query leaves out what no entry reads (payloads, kwargs,
descriptions), and a reconcile that finds nothing changed is one query, not one naming every row."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from ordinaut_site.audit import Actor
from ordinaut_site.celery import app
from tasks import scheduler as scheduler_module
from tasks import services
from tasks.models import Task
from tasks.scheduler import ForeignEntry, OrdinautScheduler, TaskEntry

pytestmark = pytest.mark.django_db(transaction=True)  # beat closes stale connections
ACTOR = Actor.system("tests")


@pytest.fixture
def loaded() -> Iterator[Any]:
    made: list[OrdinautScheduler] = []

    def load() -> OrdinautScheduler:
        scheduler = OrdinautScheduler(app=app)
        scheduler._full_load()
        made.append(scheduler)
        return scheduler

    yield load
    for scheduler in made:
        scheduler.close()


def entry_of(scheduler: OrdinautScheduler, task: Task) -> TaskEntry:
    assert task.periodic_task_id is not None
    entry = scheduler._entries[task.periodic_task_id]
    assert isinstance(entry, TaskEntry)
    return entry


def test_tasks_with_the_same_schedule_share_one_parsed_schedule(
    make_task: Any, loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cron_a, cron_b = make_task("cron", "0 9 * * *", "UTC"), make_task("cron", "0 9 * * *", "UTC")
    cron_tokyo = make_task("cron", "0 9 * * *", "Asia/Tokyo")
    rule_a = make_task("rrule", "FREQ=DAILY;BYHOUR=7;BYMINUTE=30")
    rule_b = make_task("rrule", "FREQ=DAILY;BYHOUR=7;BYMINUTE=30")
    parsed: list[int] = []
    real = scheduler_module.beat_row_schedule

    def counting(row: PeriodicTask, **kwargs: Any) -> Any:
        parsed.append(row.pk)
        return real(row, **kwargs)

    monkeypatch.setattr(scheduler_module, "beat_row_schedule", counting)
    scheduler = loaded()

    assert len(parsed) == 3, "five tasks, three different schedules, each parsed once"
    assert entry_of(scheduler, cron_a).schedule is entry_of(scheduler, cron_b).schedule
    assert entry_of(scheduler, cron_tokyo).schedule is not entry_of(scheduler, cron_a).schedule
    assert entry_of(scheduler, rule_a).schedule is entry_of(scheduler, rule_b).schedule
    assert entry_of(scheduler, cron_tokyo).next_due() != entry_of(scheduler, cron_a).next_due()

    # A task whose schedule changes gets its own; the one that kept it keeps the shared one.
    before = entry_of(scheduler, cron_b).schedule
    services.task_update(task=cron_a, actor=ACTOR, fields={"schedule_expr": "30 10 * * *"})
    scheduler._incremental_sync()
    assert entry_of(scheduler, cron_a).schedule.describe().startswith("At 10:30")
    assert entry_of(scheduler, cron_b).schedule is before


def test_the_load_reads_no_payloads_and_foreign_rows_still_load_in_full(make_task: Any, loaded: Any) -> None:
    task = make_task("cron", "0 9 * * *", payload={"pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {}}]})
    every = IntervalSchedule.objects.create(every=30, period=IntervalSchedule.SECONDS)
    foreign = PeriodicTask.objects.create(
        name="operator's own", task="some.job", interval=every, kwargs=json.dumps({"x": 1}), queue="elsewhere"
    )

    with CaptureQueriesContext(connection) as queries:
        scheduler = loaded()

    # The load's row query (the foreign row is then read again by its id, in full).
    load = [
        q["sql"]
        for q in queries.captured_queries
        if "django_celery_beat_periodictask" in q["sql"] and "LIMIT" not in q["sql"]
    ]
    assert load, "the row query was captured"
    everything = "\n".join(load)
    assert '"tasks_task"."payload"' not in everything
    assert '"tasks_task"."description"' not in everything
    assert isinstance(scheduler._entries[task.periodic_task_id], TaskEntry)
    entry = scheduler._entries[foreign.pk]
    assert isinstance(entry, ForeignEntry)
    assert entry.model_entry.kwargs == {"x": 1}
    assert entry.model_entry.options.get("queue") == "elsewhere"


def test_a_reconcile_that_finds_nothing_changed_is_one_query(make_task: Any, loaded: Any) -> None:
    tasks = [make_task("cron", f"{m} 9 * * *") for m in range(5)]
    scheduler = loaded()
    kept = dict(scheduler._entries)

    with CaptureQueriesContext(connection) as queries:
        scheduler._reconcile()

    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert scheduler._entries == kept

    # What it is for still works: a task changed behind the change feed's back is reloaded.
    Task.objects.filter(pk=tasks[0].pk).update(schedule_version=tasks[0].schedule_version + 1)
    scheduler._reconcile()
    assert scheduler._entries[tasks[0].periodic_task_id] is not kept[tasks[0].periodic_task_id]
    assert all(scheduler._entries[t.periodic_task_id] is kept[t.periodic_task_id] for t in tasks[1:])
