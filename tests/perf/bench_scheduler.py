"""B3 (docs/benchmarks.md): beat with 10,000 active tasks, 1,000 due in the same minute, one schedule
edit per second. Ordinaut's scheduler against stock django-celery-beat on the same rows.

Run:  make bench-b3            (10,000 tasks; about 8 minutes)
      make bench-b3 QUICK=1    (1,000 tasks, 100 due; about 4 minutes)

Each phase starts real processes (beat and Celery workers) on a database of its own
(DATABASE_URL, default postgres://postgres@127.0.0.1:5432/ordinaut_bench) and Redis database 8.
The baseline runs the stock DatabaseScheduler over the same PeriodicTask rows; its fires go to a
recorder job (stock beat does not name the occurrence, and cannot evaluate RRULE: the RRULE half is
given an equivalent crontab for that phase). Ours runs the real path: beat -> tasks.fire -> run.

Figures: fire lateness = when the run (ours) or the recorded fire (baseline) was created minus the
nominal time; start lateness (ours) = first step started minus scheduled_for; missed = due
occurrences with nothing after the phase; duplicates = occurrences fired more than once.
A JSON report is written to perf-report-b3.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordinaut_bench")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/8")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
os.environ["CELERY_QUEUE"] = f"bench-b3-{uuid.uuid4().hex[:8]}"

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks  # noqa: E402

from ordinaut_site.audit import Actor  # noqa: E402
from ordinaut_site.celery import app  # noqa: E402
from ordinaut_site.queues import queue_config  # noqa: E402
from ordinaut_site.services import agent_create  # noqa: E402
from runs.models import Run  # noqa: E402
from tasks import services  # noqa: E402
from tasks.beat import FIRE_JOB_NAME, beat_rows_sync  # noqa: E402
from tasks.models import Task  # noqa: E402
from tests.support.processes import Beat, Worker  # noqa: E402

for _name, _value in queue_config(os.environ["CELERY_QUEUE"]).items():
    setattr(app.conf, _name, _value)
ZONES = [
    "UTC",
    "Europe/Chisinau",
    "America/New_York",
    "Asia/Tokyo",
    "Europe/London",
    "Australia/Sydney",
    "America/Los_Angeles",
    "Asia/Kolkata",
    "Africa/Cairo",
    "America/Sao_Paulo",
]
ACTOR = Actor.system("bench")
RECORD_KEY = "bench:b3:fires"
LOG_DIR = BASE_DIR / "var" / "bench-logs"


def say(message: str) -> None:
    print(f"[b3 {datetime.now():%H:%M:%S}] {message}", flush=True)


def ensure_database() -> None:
    name = connection.settings_dict["NAME"]
    params = {
        k: v
        for k, v in {
            "host": connection.settings_dict.get("HOST") or "127.0.0.1",
            "port": connection.settings_dict.get("PORT") or 5432,
            "user": connection.settings_dict.get("USER") or "postgres",
        }.items()
        if v
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            admin.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE runs_steprun, runs_approval, runs_run, tasks_rruleschedule, tasks_task, "
            "django_celery_beat_periodictask, django_celery_beat_crontabschedule, "
            "django_celery_beat_clockedschedule, django_celery_beat_intervalschedule, "
            "ordinaut_agenttoken, ordinaut_idempotencyrecord, ordinaut_agent CASCADE"
        )


def local_parts(at: datetime, zone: str) -> tuple[int, int]:
    local = at.astimezone(ZoneInfo(zone))
    return local.hour, local.minute


def create_tasks(count: int) -> list[Task]:
    owner = agent_create(name=f"bench-{uuid.uuid4().hex[:6]}", scopes=["tasks:read", "tasks:write"], actor=ACTOR)
    far = datetime.now(UTC) + timedelta(hours=6)  # not due while we measure
    tasks = []
    started = time.monotonic()
    for i in range(count):
        zone = ZONES[i % len(ZONES)]
        hour, minute = local_parts(far + timedelta(minutes=i % 120), zone)
        if i % 2 == 0:
            kind, expr = "cron", f"{minute} {hour} * * *"
        else:
            kind, expr = "rrule", f"FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute};BYSECOND={i % 60}"
        tasks.append(
            services.task_create(
                owner=owner,
                actor=ACTOR,
                fields={
                    "title": f"bench {i}",
                    "schedule_kind": kind,
                    "schedule_expr": expr,
                    "timezone": zone,
                    "overlap": "allow",
                    "payload": {"pipeline": [{"id": "s", "uses": "orchestrator.echo", "with": {}}]},
                },
            )
        )
        if (i + 1) % 1000 == 0 or i + 1 == count:
            say(f"created {i + 1}/{count} tasks ({(i + 1) / (time.monotonic() - started):.0f}/s)")
    return tasks


def next_minute(after_s: float) -> datetime:
    at = datetime.now(UTC) + timedelta(seconds=after_s)
    return (at + timedelta(minutes=1)).replace(second=0, microsecond=0)


class Editor(threading.Thread):
    """One schedule edit per second, on tasks that are not due in the measured minute."""

    def __init__(self, tasks: list[Task], edit: Any) -> None:
        super().__init__(daemon=True)
        self.tasks, self.edit = tasks, edit
        self.stop_event = threading.Event()
        self.count = 0
        self.errors = 0

    def run(self) -> None:
        rng = random.Random(7)
        while not self.stop_event.wait(1.0):
            try:
                self.edit(rng.choice(self.tasks), rng)
                self.count += 1
            except Exception as exc:  # a failed edit is reported, not fatal
                self.errors += 1
                say(f"edit failed: {exc}")
        connection.close()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(lateness: list[float], expected: int, fired_keys: list[str]) -> dict[str, Any]:
    unique = set(fired_keys)
    return {
        "expected": expected,
        "fired": len(unique),
        "missed": expected - len(unique),
        "duplicates": len(fired_keys) - len(unique),
        "lateness_p50_s": round(percentile(lateness, 50), 3),
        "lateness_p99_s": round(percentile(lateness, 99), 3),
        "lateness_max_s": round(max(lateness), 3) if lateness else None,
        "lateness_mean_s": round(statistics.fmean(lateness), 3) if lateness else None,
    }


def wait_until(moment: datetime, label: str) -> None:
    while True:
        left = (moment - datetime.now(UTC)).total_seconds()
        if left <= 0:
            return
        say(f"{label}: {left:.0f}s to go")
        time.sleep(min(left, 15))


def phase_baseline(tasks: list[Task], due: list[Task], workers: int) -> dict[str, Any]:
    say("baseline: stock django-celery-beat DatabaseScheduler on the same rows")
    rows = redis.Redis.from_url(settings.REDIS_URL)
    rows.delete(RECORD_KEY)
    moment = next_minute(120 if len(tasks) > 2000 else 60)
    for task in due:  # crontab rows for the due minute (RRULE gets its crontab equivalent)
        hour, minute = local_parts(moment, task.timezone)
        periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
        crontab = CrontabSchedule.objects.create(minute=str(minute), hour=str(hour), timezone=task.timezone)
        old_clocked = periodic.clocked
        periodic.crontab, periodic.clocked, periodic.interval, periodic.one_off = crontab, None, None, False
        periodic.save()
        if old_clocked is not None:
            old_clocked.delete()
    PeriodicTask.objects.filter(task=FIRE_JOB_NAME).update(task="bench.record_fire")
    PeriodicTasks.update_changed()
    others = [t for t in tasks if t not in set(due)]

    def edit(task: Task, rng: random.Random) -> None:
        periodic = PeriodicTask.objects.get(pk=task.periodic_task_id)
        if periodic.crontab is not None:
            periodic.crontab.minute = str(rng.randrange(60))
            periodic.crontab.save()
        periodic.save()  # what a schedule change does: dcb's change signal

    procs = [
        Worker(LOG_DIR, concurrency=2, name=f"b3-base-{i}@bench", extra_args=("-I", "tests.perf.bench_jobs")).start()
        for i in range(workers)
    ]
    beat = Beat(LOG_DIR, "baseline", args=("-S", "django_celery_beat.schedulers:DatabaseScheduler")).start()
    say(f"baseline: processes up, {(moment - datetime.now(UTC)).total_seconds():.0f}s before the due minute")
    editor = Editor(others, edit)
    editor.start()
    try:
        wait_until(moment + timedelta(seconds=90), "baseline")
    finally:
        editor.stop_event.set()
        editor.join()
        beat.stop()
        for proc in procs:
            proc.stop()
    records = [item.decode().split("|") for item in rows.lrange(RECORD_KEY, 0, -1)]
    due_ids = {str(t.pk) for t in due}
    fired = [(task_id, float(at)) for task_id, at in records if task_id in due_ids]
    lateness = [at - moment.timestamp() for _, at in fired]
    result = summary(lateness, len(due), [task_id for task_id, _ in fired])
    result["edits"] = editor.count
    # Put the rows back the way Ordinaut keeps them.
    PeriodicTask.objects.filter(task="bench.record_fire").update(task=FIRE_JOB_NAME)
    return result


def phase_ordinaut(tasks: list[Task], due: list[Task], workers: int) -> dict[str, Any]:
    say("ordinaut: Ordinaut's scheduler, real fire jobs and runs")
    for task in tasks:  # the baseline's crontab stand-ins go; each task's own rows come back
        if task.schedule_kind == "rrule":
            fresh = Task.objects.get(pk=task.pk)
            PeriodicTask.objects.filter(pk=fresh.periodic_task_id).update(crontab=None)
            beat_rows_sync(fresh)
    # Far enough ahead for the edits below and beat's start (it loads every row first).
    moment = next_minute(30 + len(due) * 0.03)
    due_at: dict[str, datetime] = {}
    for i, task in enumerate(due):
        hour, minute = local_parts(moment, task.timezone)
        if task.schedule_kind == "cron":
            expr, at = f"{minute} {hour} * * *", moment
        else:
            second = i % 60
            expr, at = (
                f"FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute};BYSECOND={second}",
                moment + timedelta(seconds=second),
            )
        services.task_update(task=Task.objects.get(pk=task.pk), actor=ACTOR, fields={"schedule_expr": expr})
        due_at[str(task.pk)] = at
    due_ids = set(due_at)
    others = [t for t in tasks if str(t.pk) not in due_ids]

    def edit(task: Task, rng: random.Random) -> None:
        fresh = Task.objects.get(pk=task.pk)
        hour, minute = local_parts(datetime.now(UTC) + timedelta(hours=3, minutes=rng.randrange(120)), fresh.timezone)
        expr = (
            f"{minute} {hour} * * *"
            if fresh.schedule_kind == "cron"
            else (f"FREQ=DAILY;BYHOUR={hour};BYMINUTE={minute}")
        )
        services.task_update(task=fresh, actor=ACTOR, fields={"schedule_expr": expr})

    procs = [Worker(LOG_DIR, concurrency=2, name=f"b3-ord-{i}@bench").start() for i in range(workers)]
    beat = Beat(LOG_DIR, "ordinaut").start()
    say(f"ordinaut: processes up, {(moment - datetime.now(UTC)).total_seconds():.0f}s before the due minute")
    editor = Editor(others, edit)
    editor.start()
    try:
        wait_until(moment + timedelta(seconds=75), "ordinaut")
    finally:
        editor.stop_event.set()
        editor.join()
    deadline = time.monotonic() + 60
    window = Run.objects.filter(
        task_id__in=due_ids, scheduled_for__gte=moment, scheduled_for__lt=moment + timedelta(minutes=1)
    )
    while time.monotonic() < deadline and window.filter(started_at__isnull=False).count() < len(due_ids):
        time.sleep(1)
    beat.stop()
    for proc in procs:
        proc.stop()
    runs = list(window.values("task_id", "scheduled_for", "created_at", "started_at"))
    fired_keys = [
        f"{r['task_id']}|{r['scheduled_for'].isoformat()}"
        for r in runs
        if due_at.get(str(r["task_id"])) == r["scheduled_for"]
    ]
    lateness = [(r["created_at"] - r["scheduled_for"]).total_seconds() for r in runs]
    result = summary(lateness, len(due_ids), fired_keys)
    starts = [(r["started_at"] - r["scheduled_for"]).total_seconds() for r in runs if r["started_at"]]
    result["start_lateness_p50_s"] = round(percentile(starts, 50), 3)
    result["start_lateness_p99_s"] = round(percentile(starts, 99), 3)
    result["start_lateness_max_s"] = round(max(starts), 3) if starts else None
    result["edits"] = editor.count
    beat_log = beat.log_text()
    result["beat_errors"] = beat_log.count("ERROR")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks, 100 due")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (concurrency 2 each)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--report", default=str(BASE_DIR / "perf-report-b3.json"))
    args = parser.parse_args()
    total = 1000 if args.quick else 10_000
    due_count = total // 10
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    say(f"database {connection.settings_dict['NAME']}, redis {settings.REDIS_URL}, {total} tasks, {due_count} due")
    ensure_database()
    tasks = create_tasks(total)
    due = random.Random(3).sample(tasks, due_count)
    report: dict[str, Any] = {
        "tasks": total,
        "due": due_count,
        "workers": args.workers,
        "worker_concurrency": 2,
        "cores": os.cpu_count(),
    }
    if not args.skip_baseline:
        report["baseline"] = phase_baseline(tasks, due, args.workers)
        say(f"baseline: {json.dumps(report['baseline'])}")
    report["ordinaut"] = phase_ordinaut(tasks, due, args.workers)
    say(f"ordinaut: {json.dumps(report['ordinaut'])}")
    if "baseline" in report:
        base, ours = report["baseline"], report["ordinaut"]
        report["ratios"] = {
            "fired_ours_over_baseline": round(ours["fired"] / max(base["fired"], 1), 2),
            "p99_lateness_baseline_over_ours": round(base["lateness_p99_s"] / max(ours["lateness_p99_s"], 1e-3), 1)
            if base["fired"]
            else None,
        }
    goal = report["ordinaut"]
    exact = goal["missed"] == 0 and goal["duplicates"] == 0
    # docs/benchmarks.md measures lateness to the first step's start; the fire (run created) is the
    # scheduler's own part of it. Both verdicts are reported, the docs/benchmarks.md one as goal_met.
    report["fire_goal_met"] = exact and goal["lateness_p99_s"] <= 1.0 and (goal["lateness_max_s"] or 0) <= 2.0
    report["goal_met"] = (
        exact and (goal["start_lateness_p99_s"] or 0) <= 1.0 and (goal["start_lateness_max_s"] or 0) <= 2.0
    )
    say(
        f"goal (p99 <= 1 s, max <= 2 s, 0 missed, 0 duplicates): start lateness "
        f"{'met' if report['goal_met'] else 'NOT met'}; fire lateness {'met' if report['fire_goal_met'] else 'NOT met'}"
    )
    Path(args.report).write_text(json.dumps(report, indent=2))
    say(f"report written to {args.report}")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
