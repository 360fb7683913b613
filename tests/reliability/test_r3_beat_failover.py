"""R3: two beats over 1,000 frequent schedules; the leader is killed -9 mid-run.

Quick profile (the default test run): 300 interval tasks every 10 s (creating 1,000 takes most of a
minute here), 40 s under two beats with a
3 s lock, the leader killed after 20 s. Long profile (`make reliability-r3`: RELIABILITY_PROFILE=long):
10 minutes, the lock's default lifetime (ORDINAUT_BEAT_LOCK_TTL_S), the leader killed half-way and
started again as the standby. The tasks' condition is false, so each occurrence is one skipped run
(reason `condition`) and no step runs: what is measured is beat and the fire path. Afterwards the
database must show one run for every occurrence in the measured span (0 missed) and never two
(0 duplicates); beat's own log says how many occurrences were sent again (deduplicated by the
trigger key). Prints the takeover time; report in var/reliability-r3.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from runs.models import Run
from tasks.models import Task
from tasks.scheduler import leader_key
from tests.support.processes import Beat, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

BASE_DIR = Path(__file__).resolve().parents[2]
REPORT = BASE_DIR / "var" / "reliability-r3.json"
LONG = os.environ.get("RELIABILITY_PROFILE") == "long"
TASKS = int(os.environ.get("R3_TASKS") or (1000 if LONG else 300))
EVERY_S = int(os.environ.get("R3_EVERY_S") or 10)
DURATION_S = float(os.environ.get("R3_DURATION_S") or (600 if LONG else 40))
LOCK_TTL_S = None if LONG else 3
SENT = re.compile(r"beat sent (\d+) occurrence")


def say(message: str) -> None:
    print(f"[r3 {datetime.now():%H:%M:%S}] {message}", flush=True)


def test_r3_two_beats_leader_killed(make_task: Any, worker: Any, worker_logs: Path, redis_client: redis.Redis) -> None:
    say(f"creating {TASKS} interval tasks every {EVERY_S}s")
    for _ in range(TASKS):
        make_task("interval", str(EVERY_S), overlap="allow", condition="`false`")
    env = {"ORDINAUT_BEAT_LOCK_TTL_S": str(LOCK_TTL_S)} if LOCK_TTL_S else {}
    ttl_s = float(LOCK_TTL_S or 10)
    redis_client.delete(leader_key())
    beats = [Beat(worker_logs, "r3-a", env=env).start(), Beat(worker_logs, "r3-b", env=env).start()]
    try:
        wait_for(lambda: any(b.is_leader() and "beat loaded" in b.log_text() for b in beats), timeout=120)
        leader = next(b for b in beats if b.is_leader())
        standby = next(b for b in beats if b is not leader)
        # Measured from the first full interval after the leader loaded the schedules.
        span_start = datetime.now(UTC) + timedelta(seconds=EVERY_S)
        say(f"leader {leader.name}, standby {standby.name}; lock ttl {ttl_s:g}s; running {DURATION_S:.0f}s")
        time.sleep(DURATION_S / 2)
        token = redis_client.get(leader_key())
        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        say(f"kill -9 leader {leader.name}")
        wait_for(lambda: redis_client.get(leader_key()) not in (None, token), timeout=ttl_s * 4, message="the takeover")
        takeover_s = time.monotonic() - killed
        say(f"standby {standby.name} took the lock {takeover_s:.2f}s after the kill")
        if LONG:
            beats.append(Beat(worker_logs, "r3-a2", env=env).start())  # the restarted one stands by
        time.sleep(DURATION_S / 2)
        span_end = datetime.now(UTC) - timedelta(seconds=EVERY_S)
    finally:
        for beat in beats:
            beat.stop()
        redis_client.delete(leader_key())
    worker.wait_idle(timeout=300)

    sent = sum(int(n) for beat in beats for n in SENT.findall(beat.log_text()))
    runs = Run.objects.filter(trigger="schedule").values_list("task_id", "scheduled_for", "skip_reason")
    by_task: dict[Any, list[datetime]] = defaultdict(list)
    reasons: dict[str, int] = defaultdict(int)
    for task_id, at, reason in runs:
        assert at is not None, "a scheduled run has its instant"
        by_task[task_id].append(at)
        reasons[reason or "ran"] += 1
    tasks = list(Task.objects.values_list("pk", flat=True))
    expected = missed = duplicates = 0
    for task_id in tasks:
        seen = by_task.get(task_id, [])
        duplicates += len(seen) - len(set(seen))
        grid = _grid(span_start, span_end, EVERY_S)
        expected += len(grid)
        missed += len(set(grid) - set(seen))
    occurrences = sum(len(v) for v in by_task.values())
    summary = {
        "profile": "long" if LONG else "quick",
        "tasks": TASKS,
        "every_s": EVERY_S,
        "duration_s": DURATION_S,
        "lock_ttl_s": ttl_s,
        "takeover_s": round(takeover_s, 2),
        "occurrences_in_span": expected,
        "missed": missed,
        "duplicate_runs": duplicates,
        "runs": occurrences,
        "runs_by_reason": dict(reasons),
        "occurrences_sent": sent,
        "sent_again_deduplicated": max(0, sent - occurrences),
    }
    summary["goal_met"] = missed == 0 and duplicates == 0 and reasons.get("missed", 0) == 0 and takeover_s <= ttl_s + 1
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2))
    say(
        f"R3 {'PASS' if summary['goal_met'] else 'FAIL'}: {TASKS} schedules every {EVERY_S}s, leader killed -9, "
        f"takeover {takeover_s:.2f}s (lock ttl {ttl_s:g}s); {expected} occurrences in the span, {missed} missed, "
        f"{duplicates} duplicate runs; {occurrences} runs {dict(reasons)}; beat sent {sent} "
        f"({summary['sent_again_deduplicated']} again, deduplicated); report {REPORT}"
    )
    assert missed == 0
    assert duplicates == 0
    assert reasons.get("missed", 0) == 0, "an occurrence fell out of the catch-up window"
    assert takeover_s <= ttl_s + 1, f"takeover took {takeover_s:.2f}s"


def _grid(start: datetime, end: datetime, every_s: int) -> list[datetime]:
    first = int(start.timestamp()) // every_s * every_s + every_s
    return [datetime.fromtimestamp(t, UTC) for t in range(first, int(end.timestamp()) + 1, every_s)]
