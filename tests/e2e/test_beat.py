"""Real `celery beat` processes with a real worker: schedules seconds apart, two beats at once,
leader failover, downtime, pause/resume, snooze and conditions."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.utils import timezone

from ordinaut_site.audit import Actor
from runs.models import Run
from tasks import services
from tasks.models import Task
from tasks.scheduler import LEADER_RETRY_S, leader_key
from tests.support.processes import Beat, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
ACTOR = Actor.system("tests")
LOCK_TTL_S = 3
EVERY_S = 2
# A standby looks for the lock every LEADER_RETRY_S; this covers Redis round trips and a busy machine.
TAKEOVER_SLACK_S = 0.5
SENT = "beat sent"  # the scheduler's log line for each batch of occurrences it dispatches


@pytest.fixture
def beats(worker_logs: Path, redis_client: Any, worker: Any) -> Iterator[Any]:
    started: list[Beat] = []
    redis_client.delete(leader_key())

    def start(name: str = "a", **env: str) -> Beat:
        beat = Beat(worker_logs, name, env={"ORDINAUT_BEAT_LOCK_TTL_S": str(LOCK_TTL_S), **env}).start()
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()
    redis_client.delete(leader_key())
    worker.wait_idle()  # the jobs the beats sent finish before the teardown empties the database


def when(run: Run) -> datetime:
    assert run.scheduled_for is not None
    return run.scheduled_for


def schedule_runs(task: Task) -> list[Run]:
    return list(Run.objects.filter(task=task, trigger="schedule").order_by("scheduled_for"))


def assert_one_run_per_occurrence(runs: list[Run]) -> None:
    times = [when(r) for r in runs]
    assert len(times) == len(set(times)), "two runs for one occurrence"
    assert all(t.timestamp() % EVERY_S == 0 for t in times), "scheduled_for is the nominal grid time"
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert gaps <= {float(EVERY_S)}, f"occurrences were skipped: gaps {sorted(gaps)}"


def test_schedule_seconds_apart_gives_one_run_per_occurrence(make_task: Any, beats: Any, worker: Any) -> None:
    task = make_task("interval", str(EVERY_S), overlap="allow")
    beats("solo")
    runs = wait_for(lambda: (r := schedule_runs(task)) and len(r) >= 4 and r, timeout=60, message="4 runs")
    assert_one_run_per_occurrence(runs)
    done = wait_for(lambda: (r := Run.objects.get(pk=runs[0].pk)).status == "succeeded" and r, message="finished")
    assert done.lateness_seconds is not None
    assert done.lateness_seconds >= 0


def all_finished(runs: list[Run]) -> list[Run] | None:
    fresh = [Run.objects.get(pk=r.pk) for r in runs]
    return fresh if all(r.status in Run.TERMINAL for r in fresh) else None


def beat_leading(beat: Beat) -> Beat:
    """Wait until the beat leads and has loaded the schedules, so what a test creates next is
    picked up as a change (within a second), like an agent's task on a running system."""
    wait_for(lambda: "beat loaded" in beat.log_text(), timeout=60, message=f"beat to load ({beat.log_path})")
    return beat


def test_cron_every_minute_fires_at_the_minute(make_task: Any, beats: Any, worker: Any) -> None:
    task = make_task("cron", "* * * * *", "Europe/Chisinau", overlap="allow")
    minute = task.next_run_at
    assert minute is not None
    assert (minute.second, minute.microsecond) == (0, 0)
    beats("cron")  # loads the task at start; its minute is at most a minute away
    runs = wait_for(lambda: schedule_runs(task), timeout=90, message=f"the run of {minute.isoformat()}")
    assert [when(r) for r in runs] == [minute]
    [run] = wait_for(partial(all_finished, runs), message="the run to finish")
    assert run.status == "succeeded"
    assert run.lateness_seconds is not None
    assert 0 <= run.lateness_seconds < 30
    wait_for(
        lambda: Task.objects.get(pk=task.pk).next_run_at == minute + timedelta(minutes=1),
        message="beat to move next_run_at to the next minute",
    )


def test_rrule_every_two_seconds_gives_one_run_per_occurrence(make_task: Any, beats: Any, worker: Any) -> None:
    beat_leading(beats("rrule"))
    task = make_task("rrule", f"FREQ=SECONDLY;INTERVAL={EVERY_S}", "Europe/Chisinau", overlap="allow")
    runs = wait_for(lambda: (r := schedule_runs(task)) and len(r) >= 3 and r, timeout=60, message="3 runs")
    assert_one_run_per_occurrence(runs)
    assert task.created_at < when(runs[0]) <= task.created_at + timedelta(seconds=EVERY_S + 1)
    finished = wait_for(partial(all_finished, runs[:3]), message="the runs to finish")
    assert [r.status for r in finished] == ["succeeded"] * 3


def test_once_fires_at_its_time_and_completes_the_task(make_task: Any, beats: Any, worker: Any) -> None:
    beat_leading(beats("once"))
    at = (timezone.now() + timedelta(seconds=3)).replace(microsecond=0)
    task = make_task(
        "once", at.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None).isoformat(), "America/New_York"
    )
    runs = wait_for(lambda: schedule_runs(task), timeout=60, message="the once run")
    [run] = wait_for(partial(all_finished, runs), message="the run to finish")
    assert (when(run), run.status) == (at, "succeeded")
    task.refresh_from_db()
    assert (task.status, task.next_run_at, task.last_run_at) == ("completed", None, at)
    assert task.periodic_task is not None
    assert not task.periodic_task.enabled
    assert len(schedule_runs(task)) == 1


def test_two_beats_still_one_run_per_occurrence_and_failover_within_a_ttl(
    make_task: Any, beats: Any, worker: Any, redis_client: Any
) -> None:
    task = make_task("interval", str(EVERY_S), overlap="allow")
    first, second = beats("one"), beats("two")
    wait_for(lambda: len(schedule_runs(task)) >= 4, timeout=60, message="runs under two beats")
    leader, standby = (first, second) if first.is_leader() else (second, first)
    assert leader.is_leader()
    assert not standby.is_leader()
    assert SENT in leader.log_text()
    assert SENT not in standby.log_text(), "the standby dispatched nothing while the leader was alive"
    token = redis_client.get(leader_key())

    leader.stop(signal.SIGKILL)  # no chance to release the lock
    killed_at = time.monotonic()
    lock_left_s = max(redis_client.pttl(leader_key()), 0) / 1000  # the dead leader's last renewal runs out
    wait_for(
        lambda: redis_client.get(leader_key()) not in (None, token),
        timeout=LOCK_TTL_S * 4,
        message="the standby to take the lock",
    )
    takeover_s = time.monotonic() - killed_at
    assert takeover_s <= LOCK_TTL_S + LEADER_RETRY_S + TAKEOVER_SLACK_S, f"took {takeover_s:.2f}s"
    assert takeover_s - lock_left_s <= LEADER_RETRY_S + TAKEOVER_SLACK_S, (
        f"took {takeover_s - lock_left_s:.2f}s after the lock expired"
    )
    count = len(schedule_runs(task))
    wait_for(lambda: len(schedule_runs(task)) >= count + 3, timeout=60, message="runs after failover")
    assert_one_run_per_occurrence(schedule_runs(task))


def test_beat_down_then_restarted_catches_up_inside_window_and_records_older_as_missed(
    make_task: Any, beats: Any, worker: Any
) -> None:
    task = make_task("interval", str(EVERY_S), overlap="allow", catchup_window_seconds=3)
    beat = beats("first", ORDINAUT_MISSED_GRACE_S="0")
    wait_for(lambda: len(schedule_runs(task)) >= 2, timeout=60, message="first runs")
    beat.stop()
    stopped = timezone.now()
    time.sleep(EVERY_S * 4)  # beat is down for several occurrences
    beats("second", ORDINAUT_MISSED_GRACE_S="0")
    restarted = timezone.now()
    wait_for(
        lambda: (
            Run.objects.filter(task=task, scheduled_for__gt=restarted + timedelta(seconds=EVERY_S))
            .exclude(status="skipped")
            .exists()
        ),
        timeout=60,
        message="runs after the restart",
    )
    runs = schedule_runs(task)
    assert_one_run_per_occurrence(runs)
    down = [r for r in runs if stopped < when(r) <= restarted]
    assert down, "occurrences fell in the downtime"
    missed = [r for r in down if r.skip_reason == "missed"]
    # Fired by the second beat (the first may have fired ahead of its stop, by the dispatch lead).
    caught_up = [r for r in runs if r.created_at > stopped and r.status != "skipped"]
    assert missed, "occurrences older than the window are recorded as skipped"
    assert caught_up, "occurrences inside the window run"
    # At load time L, occurrences before L - 3 s are missed and those after run: missed ones all
    # come first, and at most two (a 3 s window, 2 s apart) were still owed when beat came back.
    assert max(when(r) for r in missed) < min(when(r) for r in caught_up)
    assert len([r for r in caught_up if when(r) <= restarted]) <= 2


def test_pause_stops_firing_and_resume_continues_without_backfill(make_task: Any, beats: Any, worker: Any) -> None:
    task = make_task("interval", str(EVERY_S), overlap="allow")
    beats()
    wait_for(lambda: len(schedule_runs(task)) >= 2, timeout=60, message="first runs")
    services.task_pause(task=Task.objects.get(pk=task.pk), actor=ACTOR)
    paused_at = timezone.now()
    time.sleep(EVERY_S * 3)
    resumed_at = timezone.now()
    services.task_resume(task=Task.objects.get(pk=task.pk), actor=ACTOR)
    wait_for(
        lambda: Run.objects.filter(task=task, scheduled_for__gt=resumed_at).count() >= 2,
        timeout=60,
        message="runs after resume",
    )
    during = Run.objects.filter(
        task=task, scheduled_for__gt=paused_at + timedelta(seconds=1.5), scheduled_for__lte=resumed_at
    )
    # An occurrence fired ahead of the pause (ORDINAUT_DISPATCH_LEAD_S) is recorded, skipped at its
    # instant with reason paused; nothing else falls in the pause, nothing runs in it.
    assert not during.exclude(status="skipped", skip_reason="paused").exists(), "nothing runs while paused"
    lead = timedelta(seconds=settings.ORDINAUT_DISPATCH_LEAD_S + 1)
    assert all(when(run) <= paused_at + lead for run in during), "resume does not backfill"


def test_snooze_skips_what_it_covers_then_runs(make_task: Any, beats: Any, worker: Any) -> None:
    task = make_task("interval", str(EVERY_S), overlap="allow")
    beats()
    wait_for(lambda: len(schedule_runs(task)) >= 1, timeout=60, message="a first run")
    snoozed = services.task_snooze(task=Task.objects.get(pk=task.pk), actor=ACTOR, delay_seconds=5)
    wake = snoozed.snoozed_until
    assert wake is not None
    wait_for(lambda: Run.objects.filter(task=task, scheduled_for=wake).exists(), timeout=60, message="wake-up run")
    skipped = Run.objects.filter(task=task, skip_reason="snoozed")
    assert skipped.count() >= 2
    assert all(when(r) < wake for r in skipped)
    assert Run.objects.get(task=task, scheduled_for=wake).status != "skipped"


def test_condition_false_records_skipped_runs(make_task: Any, beats: Any, worker: Any) -> None:
    task = make_task(
        "interval",
        str(EVERY_S),
        overlap="allow",
        condition="task.params.go == `true`",
        payload={"params": {"go": False}, "pipeline": []},
    )
    beats()
    runs = wait_for(
        lambda: (r := [run for run in schedule_runs(task) if run.status in Run.TERMINAL]) and len(r) >= 2 and r,
        timeout=60,
        message="two runs",
    )
    assert {(r.status, r.skip_reason) for r in runs} == {("skipped", "condition")}


def test_runs_are_fired_ahead_and_start_at_their_instant(make_task: Any, beats: Any, worker: Any) -> None:
    """ORDINAUT_DISPATCH_LEAD_S (2 s by default): each run exists before its instant, scheduled,
    and its first step starts at the instant (the ETA), not before it and not a batch later."""
    task = make_task("interval", str(EVERY_S), overlap="allow")
    beats()

    def settled_after_beat_was_up() -> list[Run] | None:
        runs = schedule_runs(task)
        if not runs:
            return None
        # Beat's first tick fires what fell due while it started: those are not ahead of time.
        up_at = min(run.created_at for run in runs) + timedelta(seconds=3)
        later = [run for run in runs if run.scheduled_for is not None and run.scheduled_for > up_at]
        done = [run for run in later if run.status == "succeeded"]
        return done if len(done) >= 3 else None

    runs = wait_for(settled_after_beat_was_up, timeout=60, message="three runs after beat was up")
    for run in runs:
        assert run.scheduled_for is not None
        assert run.started_at is not None
        assert run.created_at < run.scheduled_for, "created ahead of its instant"
        assert run.started_at >= run.scheduled_for - timedelta(milliseconds=50), "not started before its instant"
    lateness = sorted((run.started_at - run.scheduled_for).total_seconds() for run in runs if run.started_at)
    print(f"\n[lead] first-step lateness of {len(lateness)} runs fired ahead: {[round(x, 3) for x in lateness]} s")
