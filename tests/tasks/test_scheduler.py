"""Ordinaut's beat scheduler driven by a controllable clock, dispatching to a real worker.

The clock moves beat through days (DST changes, downtime) in moments; the fire jobs run on the
session's real worker and create the runs, so each test checks what a user would see: runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.db.models import F
from django_celery_beat.models import PeriodicTask

from ordinaut_site.audit import Actor
from ordinaut_site.celery import app
from runs.models import Run
from tasks import selectors, services
from tasks.models import Task
from tasks.scheduler import OrdinautScheduler, ParkedEntry, TaskEntry, leader_key
from tests.support.dst import KINDS, TIMES, ZONES, daily, expected_local, window_start
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
ACTOR = Actor.system("tests")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


@pytest.fixture(autouse=True)
def worker_idle_at_teardown(worker: Any) -> Iterator[None]:
    """Jobs this test sent finish before the teardown empties the database under them."""
    yield
    worker.wait_idle()


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2027, 1, 1, tzinfo=UTC))


@pytest.fixture
def make_scheduler(redis_client: Any, clock: Clock) -> Iterator[Any]:
    made: list[OrdinautScheduler] = []
    redis_client.delete(leader_key())

    def make() -> OrdinautScheduler:
        scheduler = OrdinautScheduler(app=app)
        scheduler.clock = clock
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()
    redis_client.delete(leader_key())


def drive(scheduler: OrdinautScheduler, clock: Clock, until: datetime, step: timedelta = timedelta(minutes=1)) -> None:
    """Move the clock to `until` in steps, letting beat send everything that falls due. A step is
    how late beat may see an occurrence: keep it well inside the catch-up window, as a real beat
    (which ticks at least every second) does, or occurrences are recorded as missed."""
    while clock.at < until:
        clock.at = min(clock.at + step, until)
        for _ in range(10_000):
            if scheduler.tick() > 0:
                break


def start_at(task: Task, at: datetime) -> None:
    """Pretend the schedule started at `at` (beat owes every occurrence after it)."""
    Task.objects.filter(pk=task.pk).update(fired_through=at, schedule_version=F("schedule_version") + 1)
    PeriodicTask.objects.filter(pk=task.periodic_task_id).update(date_changed=datetime.now(UTC))
    task.refresh_from_db()


def runs_of(task: Task) -> list[Run]:
    return list(Run.objects.filter(task=task).order_by("scheduled_for"))


def when(run: Run) -> datetime:
    assert run.scheduled_for is not None
    return run.scheduled_for


def runs_since(task: Task, begin: datetime, count: int) -> list[Run] | None:
    runs = [r for r in runs_of(task) if r.scheduled_for is not None and r.scheduled_for >= begin]
    return runs if len(runs) >= count else None


def settled_since(task: Task, begin: datetime, count: int) -> list[Run] | None:
    runs = runs_since(task, begin, count)
    return runs if runs is not None and all(r.status in Run.TERMINAL for r in runs) else None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("zone", list(ZONES))
def test_beat_fires_every_dst_occurrence_when_preview_says(
    kind: str, zone: str, make_task: Any, make_scheduler: Any, clock: Clock, worker: Any
) -> None:
    """09:00 stays 09:00, 02:30 runs at 03:30 on the spring-forward day, 01:30 runs once on the
    fall-back day: each occurrence fires (a run that succeeds, not one recorded as missed)."""
    spring, fall, _ = ZONES[zone]
    tz = ZoneInfo(zone)
    tasks = {hh_mm: make_task(kind, daily(kind, hh_mm), zone, overlap="allow", title=hh_mm) for hh_mm in TIMES}
    for day in (spring, fall):
        begin = window_start(zone, day)
        for task in tasks.values():
            start_at(task, begin)
        previews = {
            hh_mm: [o["at"] for o in selectors.task_next_runs(task=task, count=5)] for hh_mm, task in tasks.items()
        }
        clock.at = begin
        scheduler = make_scheduler()
        drive(scheduler, clock, begin + timedelta(days=5) - timedelta(minutes=1))
        scheduler.close()

        for hh_mm, task in tasks.items():
            fired: list[Run] = wait_for(
                partial(settled_since, task, begin, 5), timeout=60, message=f"{hh_mm} runs around {day} to finish"
            )
            local = [when(r).astimezone(tz) for r in fired]
            assert [at.isoformat() for at in local] == previews[hh_mm] == expected_local(zone, hh_mm, day)
            assert [(r.trigger, r.status, r.skip_reason) for r in fired] == [("schedule", "succeeded", "")] * 5
            on_the_day = [at.strftime("%H:%M") for at in local if at.date().isoformat() == day]
            if hh_mm == "02:30" and day == spring:
                assert on_the_day == ["03:30"]
            else:
                assert on_the_day == [hh_mm], "once on the day of the change, at its wall-clock time"


def test_after_downtime_inside_window_runs_and_older_are_recorded_missed(
    make_task: Any, make_scheduler: Any, clock: Clock, worker: Any
) -> None:
    task = make_task("interval", "PT10M", catchup_window_seconds=15 * 60, overlap="allow")
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    start_at(task, t0)
    clock.at = t0 + timedelta(hours=1, seconds=1)  # beat was down for an hour
    make_scheduler().tick()

    def settled() -> list[Run] | None:
        runs = runs_of(task)
        return runs if len(runs) == 6 and all(r.status in Run.TERMINAL for r in runs) else None

    runs = wait_for(settled, message="six runs for the hour")
    assert [(r.scheduled_for - t0, r.status, r.skip_reason) for r in runs] == [
        (timedelta(minutes=10), "skipped", "missed"),
        (timedelta(minutes=20), "skipped", "missed"),
        (timedelta(minutes=30), "skipped", "missed"),
        (timedelta(minutes=40), "skipped", "missed"),
        (timedelta(minutes=50), "succeeded", ""),
        (timedelta(minutes=60), "succeeded", ""),
    ]
    task.refresh_from_db()
    assert task.fired_through == t0 + timedelta(minutes=60)
    assert task.next_run_at == t0 + timedelta(minutes=70)


def test_a_restarted_beat_continues_from_the_durable_cursor(
    make_task: Any, make_scheduler: Any, clock: Clock, worker: Any
) -> None:
    task = make_task("interval", "PT10M", overlap="allow")
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    start_at(task, t0)
    clock.at = t0
    first = make_scheduler()
    drive(first, clock, t0 + timedelta(minutes=30), step=timedelta(minutes=1))
    first.close()  # beat stops; ten minutes pass
    clock.at = t0 + timedelta(minutes=40, seconds=5)
    make_scheduler().tick()

    runs = wait_for(lambda: (r := runs_of(task)) and len(r) >= 4 and r, message="four runs")
    assert [r.scheduled_for - t0 for r in runs] == [timedelta(minutes=m) for m in (10, 20, 30, 40)]
    assert [r.status for r in runs].count("skipped") == 0


def test_only_the_lock_holder_dispatches(make_task: Any, make_scheduler: Any, clock: Clock, worker: Any) -> None:
    task = make_task("interval", "PT1M", overlap="allow")
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    start_at(task, t0)
    clock.at = t0
    leader, standby = make_scheduler(), make_scheduler()
    sent = {id(leader): 0, id(standby): 0}
    for scheduler in (leader, standby):
        dispatch = scheduler._dispatch

        def counting(batch: Any, scheduler_id: int = id(scheduler), dispatch: Any = dispatch) -> None:
            sent[scheduler_id] += len(batch.fires)
            dispatch(batch)

        scheduler._dispatch = counting  # type: ignore[method-assign]
    leader.tick()
    assert leader.is_leader
    standby.tick()
    assert not standby.is_leader
    clock.at = t0 + timedelta(minutes=5, seconds=1)
    for _ in range(20):
        standby.tick()
        leader.tick()
    runs = wait_for(lambda: (r := runs_of(task)) and len(r) >= 5 and r, message="five runs")
    time.sleep(0.5)
    assert len(runs_of(task)) == 5
    assert [r.scheduled_for - t0 for r in runs] == [timedelta(minutes=m) for m in range(1, 6)]
    assert sent == {id(leader): 5, id(standby): 0}, "the standby sent nothing; the database did not have to dedupe"


def test_a_schedule_change_reloads_only_that_task(make_task: Any, make_scheduler: Any, clock: Clock) -> None:
    tasks = [make_task("cron", f"{m} 9 * * *") for m in range(5)]
    clock.at = datetime.now(UTC)
    scheduler = make_scheduler()
    scheduler.tick()
    before = dict(scheduler._entries)
    assert len([e for e in before.values() if isinstance(e, TaskEntry)]) == 5

    services.task_update(task=tasks[2], actor=ACTOR, fields={"schedule_expr": "30 10 * * *"})
    scheduler._last_sync = 0.0  # the next tick looks for changes
    scheduler.tick()

    after = scheduler._entries
    changed = tasks[2].periodic_task_id
    assert after[changed] is not before[changed]
    assert after[changed].schedule.describe().startswith("At 10:30")
    assert all(after[pk] is before[pk] for pk in before if pk != changed), "untouched entries were kept"


def test_pause_and_delete_leave_beat(make_task: Any, make_scheduler: Any, clock: Clock) -> None:
    paused, deleted, kept = make_task(), make_task(), make_task()
    clock.at = datetime.now(UTC)
    scheduler = make_scheduler()
    scheduler.tick()
    services.task_pause(task=paused, actor=ACTOR)
    services.task_delete(task=deleted, actor=ACTOR)
    PeriodicTask.objects.filter(pk=kept.periodic_task_id).delete()  # an operator removes a beat row
    scheduler._last_sync = scheduler._last_reconcile = 0.0
    scheduler.tick()
    loaded = {e.task_id for e in scheduler._entries.values() if isinstance(e, TaskEntry)}
    assert loaded.isdisjoint({paused.pk, deleted.pk, kept.pk})


def test_a_change_made_while_beat_dispatches_is_not_overwritten(
    make_task: Any, make_scheduler: Any, clock: Clock, worker: Any
) -> None:
    task = make_task("interval", "PT10M", overlap="allow")
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    start_at(task, t0)
    clock.at = t0
    scheduler = make_scheduler()
    scheduler.tick()
    services.task_update(task=task, actor=ACTOR, fields={"schedule_expr": "PT1H"})  # beat has not seen it yet
    task.refresh_from_db()
    expected = (task.fired_through, task.next_run_at)
    scheduler._last_sync = time.monotonic() + 3600
    clock.at = t0 + timedelta(minutes=10, seconds=1)
    scheduler.tick()  # sends the old schedule's occurrence, then must not move the new cursor
    task.refresh_from_db()
    assert (task.fired_through, task.next_run_at) == expected


# --- Each entry is isolated: a beat row that raises parks its task, the others keep firing -------


def _corrupt(sql: str, *params: Any) -> None:
    """Write a beat row straight to the database, past every validation (as a bad migration, a
    hand edit or a restore might)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


class Exploding:
    """A schedule that raises when evaluated (standing in for a bug in an occurrence function)."""

    kind = "interval"
    tz = ZoneInfo("UTC")

    def next_after(self, after: datetime) -> datetime | None:
        raise RuntimeError("occurrence function blew up")

    def describe(self) -> str:
        return "explodes"


def test_rows_that_raise_park_their_task_and_the_others_keep_firing(
    make_task: Any, make_scheduler: Any, clock: Clock, worker: Any, agent: Any
) -> None:
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    good = [make_task("interval", "PT1M", overlap="allow", title=f"good {i}") for i in range(3)]
    bad_zone = make_task("cron", "* * * * *", overlap="allow", title="bad zone")
    bad_interval = make_task("interval", "PT1M", overlap="allow", title="bad interval")
    bad_rrule = make_task("rrule", "FREQ=MINUTELY", overlap="allow", title="bad rrule")
    for task in (*good, bad_zone, bad_interval, bad_rrule):
        start_at(task, t0)
    crontab = PeriodicTask.objects.get(pk=bad_zone.periodic_task_id).crontab_id
    _corrupt("UPDATE django_celery_beat_crontabschedule SET timezone = %s WHERE id = %s", "Mars/Olympus", crontab)
    interval = PeriodicTask.objects.get(pk=bad_interval.periodic_task_id).interval_id
    _corrupt("UPDATE django_celery_beat_intervalschedule SET every = 0 WHERE id = %s", interval)
    _corrupt(
        "UPDATE tasks_rruleschedule SET rrule = %s WHERE periodic_task_id = %s",
        "FREQ=NEVER",
        bad_rrule.periodic_task_id,
    )

    clock.at = t0
    scheduler = make_scheduler()
    drive(scheduler, clock, t0 + timedelta(minutes=5, seconds=1))
    assert scheduler._loaded, "no reload of everything: the bad rows failed their own entries only"

    for task in good:
        runs = wait_for(partial(settled_since, task, t0, 5), message=f"{task.title} to fire five times")
        assert [when(r) - t0 for r in runs] == [timedelta(minutes=m) for m in range(1, 6)]
    for task in (bad_zone, bad_interval, bad_rrule):
        task.refresh_from_db()
        assert runs_of(task) == []
        assert task.schedule_parked_at is not None
        assert task.schedule_error
        body = agent.client.get(f"/tasks/{task.pk}").json()
        assert body["schedule_error"] == task.schedule_error
        assert body["schedule_parked_at"] is not None
        assert agent.client.get(f"/tasks/{task.pk}/next_runs").json()["occurrences"] == []
    assert "Mars/Olympus" in Task.objects.get(pk=bad_zone.pk).schedule_error
    assert "interval of 0 seconds" in Task.objects.get(pk=bad_interval.pk).schedule_error
    parked = {e.task_id for e in scheduler._entries.values() if isinstance(e, ParkedEntry)}
    assert parked == {bad_zone.pk, bad_interval.pk, bad_rrule.pk}

    # Saving the task rewrites its beat row from the task: beat loads it again and unparks it.
    services.task_update(task=Task.objects.get(pk=bad_interval.pk), actor=ACTOR, fields={"title": "fixed"})
    scheduler._last_sync = 0.0
    scheduler.tick()
    fixed = Task.objects.get(pk=bad_interval.pk)
    assert (fixed.schedule_error, fixed.schedule_parked_at) == ("", None)
    assert isinstance(scheduler._entries[fixed.periodic_task_id], TaskEntry)


def test_a_schedule_that_raises_while_beat_collects_parks_only_its_task(
    make_task: Any, make_scheduler: Any, clock: Clock, worker: Any
) -> None:
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    good, bad = make_task("interval", "PT1M", overlap="allow"), make_task("interval", "PT1M", overlap="allow")
    start_at(good, t0)
    start_at(bad, t0)
    clock.at = t0
    scheduler = make_scheduler()
    scheduler.tick()
    kept = scheduler._entries[good.periodic_task_id]
    entry = scheduler._entries[bad.periodic_task_id]
    assert isinstance(entry, TaskEntry)
    entry.schedule = Exploding()  # due on the heap at t0 + 1 min, raises when beat looks again

    drive(scheduler, clock, t0 + timedelta(minutes=3, seconds=1))
    assert scheduler._entries[good.periodic_task_id] is kept, "the good entry was not reloaded"
    runs = wait_for(partial(settled_since, good, t0, 3), message="the good task's three runs")
    assert [when(r) - t0 for r in runs] == [timedelta(minutes=m) for m in (1, 2, 3)]
    bad.refresh_from_db()
    assert runs_of(bad) == []
    assert bad.schedule_error == "RuntimeError: occurrence function blew up"
    assert isinstance(scheduler._entries[bad.periodic_task_id], ParkedEntry)


def test_a_leader_busy_longer_than_the_lock_lifetime_keeps_its_lock(
    make_scheduler: Any, redis_client: Any, settings: Any
) -> None:
    settings.ORDINAUT_BEAT_LOCK_TTL_S = 1
    leader, standby = make_scheduler(), make_scheduler()
    leader.tick()
    assert leader.is_leader

    time.sleep(3.5)  # one tick that takes three lock lifetimes: the renewal must not wait for it

    assert redis_client.get(leader_key()).decode() == leader._token
    standby.tick()
    assert not standby.is_leader, "the busy leader's lock did not expire"
    leader.tick()
    assert leader.is_leader


def test_a_leader_whose_lock_was_taken_stands_by_at_its_next_tick(
    make_scheduler: Any, redis_client: Any, settings: Any
) -> None:
    settings.ORDINAUT_BEAT_LOCK_TTL_S = 1
    leader = make_scheduler()
    leader.tick()
    redis_client.set(leader_key(), "another-beat", px=60_000)  # e.g. a partition let another take over

    wait_for(lambda: leader._lease is not None and leader._lease.lost.is_set(), message="the lease to notice")
    leader.tick()

    assert not leader.is_leader
