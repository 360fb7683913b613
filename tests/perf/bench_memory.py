"""B6 (docs/benchmarks.md): the memory of web, worker, beat and the events consumer across B1-like rounds,
and (--profile) py-spy profiles of the step path and the fire path.

Run:  .venv/bin/python tests/perf/bench_memory.py --quick             (about 2 minutes)
      .venv/bin/python tests/perf/bench_memory.py                     (about 5 minutes)
      .venv/bin/python tests/perf/bench_memory.py --quick --profile   (with the profiles; make bench does)

The four processes are started from deploy/Procfile's lines (web, worker with its prefork pool of 2,
beat, events) on a database of their own (`ordinaut_bench_memory` as the role `ordinaut_bench`, see
tests/perf/stack.py; DATABASE_URL to change it) and Redis database 6 (REDIS_URL). Each round creates
--runs runs of B1's 5-step orchestrator.echo pipeline through the web, half by POST /tasks/{id}/run_now
and half by POST /events (the consumer turns those into runs), while beat fires 10 interval tasks every
2 seconds, and waits until every run has finished. After each round the resident set size (RSS, from
/proc) of each process is read: the worker's main process and each pool process apart. Goal: no growth
after the first round: each process's RSS after the last round at most max(5%, 4 MiB) above its
RSS after the first (the first round pays for imports, caches and pools warming up).

--profile: then py-spy samples the worker (with its pool processes) during one more round (the step
path), and the worker and beat while 200 interval tasks fire every 10 seconds (the fire path); the
collapsed-stack files go to var/bench-profiles/ and their heaviest functions into the report.
The report goes to perf-report-b6.json (--report), the processes' logs to var/bench-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf import stack

say = stack.make_say("b6")
STEPS = 5
TOPIC = "bench.b6"
GROWTH_TOLERANCE = 0.05
GROWTH_TOLERANCE_BYTES = 4 * 1024 * 1024
MiB = 1024 * 1024
NO_METRICS_PORTS = {
    "ORDINAUT_METRICS_PORT_WORKER": "0",
    "ORDINAUT_METRICS_PORT_BEAT": "0",
    "ORDINAUT_METRICS_PORT_EVENTS": "0",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs per round: about 2 minutes")
    parser.add_argument("--runs", type=int, help="runs per round (default 600, quick 150)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--profile", action="store_true", help="py-spy profiles of the step and fire paths after")
    parser.add_argument("--report", default=str(stack.BASE_DIR / "perf-report-b6.json"))
    return parser


def pipeline(steps: int) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "uses": "orchestrator.echo", "with": {"i": i}} for i in range(steps)]


class Stack:
    """web, worker, beat and events, each from its Procfile line."""

    def __init__(self) -> None:
        env = {**NO_METRICS_PORTS, "LOG_LEVEL": "WARNING", "WORKER_CONCURRENCY": "2"}
        self.web = stack.Proc.role("web", name="b6-web", env=env, port=stack.free_port())
        self.worker = stack.Proc.role("worker", name="b6-worker", env=env)
        self.beat = stack.Proc.role("beat", name="b6-beat", env=env)
        self.events = stack.Proc.role("events", name="b6-events", env=env)
        self.all = [self.web, self.worker, self.beat, self.events]

    def start(self) -> Stack:
        from ordinaut_site.celery import app

        self.web.start()
        self.worker.start(ready=lambda: bool(app.control.ping(timeout=0.5)))
        self.beat.start()
        self.events.start()
        return self

    def stop(self) -> None:
        for proc in self.all:
            proc.stop()

    def rss(self) -> dict[str, Any]:
        """RSS of each role: the process (or, for web, its tree) and, for the worker, each pool process."""
        found: dict[str, Any] = {}
        for role, proc in (("web", self.web), ("beat", self.beat), ("events", self.events)):
            found[role] = {"rss_bytes": sum(stack.rss_bytes(pid) for pid in stack.tree(proc.pid))}
        main = self.worker.pid
        pool = stack.children(main)
        found["worker"] = {
            "rss_bytes": stack.rss_bytes(main),
            "pool_rss_bytes": [stack.rss_bytes(pid) for pid in pool],
            "pool_pids": pool,
        }
        found["worker_pool"] = {"rss_bytes": sum(found["worker"]["pool_rss_bytes"])}
        return found


def make_tasks(owner: Any) -> dict[str, Any]:
    from ordinaut_site.audit import Actor
    from tasks import services

    actor = Actor.system("bench")
    manual = services.task_create(
        owner=owner,
        actor=actor,
        fields={"title": "B6 manual", "schedule_kind": "manual", "payload": {"pipeline": pipeline(STEPS)}},
    )
    services.task_create(
        owner=owner,
        actor=actor,
        fields={
            "title": "B6 on event",
            "schedule_kind": "event",
            "schedule_expr": TOPIC,
            "overlap": "allow",
            "payload": {"pipeline": pipeline(STEPS)},
        },
    )
    for number in range(10):
        services.task_create(
            owner=owner,
            actor=actor,
            fields={
                "title": f"B6 every 2 s #{number}",
                "schedule_kind": "interval",
                "schedule_expr": "2",
                "overlap": "allow",
                "payload": {"pipeline": pipeline(1)},
            },
        )
    return {"manual": manual}


def create_runs(base: str, token: str, manual_id: str, count: int, *, threads: int = 4) -> int:
    """`count` runs through the web: half run_now, half events, from a few threads. Returns how many
    requests were accepted."""
    import httpx2

    accepted = [0]
    lock = threading.Lock()

    def send(share: range) -> None:
        with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
            for n in share:
                if n % 2:
                    response = client.post("/events", json={"topic": TOPIC, "payload": {"n": n}})
                else:
                    response = client.post(f"/tasks/{manual_id}/run_now", json={"params": {"n": n}})
                if response.status_code in (201, 202):
                    with lock:
                        accepted[0] += 1

    workers = [threading.Thread(target=send, args=(range(i, count, threads),)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return accepted[0]


def finish_round(since: Any, expected: int, limit_s: float = 600) -> dict[str, Any]:
    """Wait until the round's runs (created since `since`, by run_now and events) have all finished."""
    from runs.models import Run

    started = time.monotonic()
    runs = Run.objects.filter(created_at__gte=since, trigger__in=["manual", "event"])
    last = -1.0
    while True:
        total = runs.count()
        done = runs.filter(status__in=Run.TERMINAL).count()
        if total >= expected and done >= total:
            break
        if time.monotonic() - started > limit_s:
            say(f"round: gave up after {limit_s}s with {done}/{total} runs finished")
            break
        if time.monotonic() - last >= 5:
            last = time.monotonic()
            say(f"  {done}/{expected} runs finished")
        time.sleep(0.5)
    succeeded = runs.filter(status=Run.Status.SUCCEEDED).count()
    return {"runs": runs.count(), "succeeded": succeeded, "elapsed_s": round(time.monotonic() - started, 1)}


def verdict(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = rounds[0]["rss"], rounds[-1]["rss"]
    growth: dict[str, Any] = {}
    for role in ("web", "worker", "worker_pool", "beat", "events"):
        before, after = first[role]["rss_bytes"], last[role]["rss_bytes"]
        allowed = max(before * GROWTH_TOLERANCE, GROWTH_TOLERANCE_BYTES)
        growth[role] = {
            "first_round_mib": round(before / MiB, 1),
            "last_round_mib": round(after / MiB, 1),
            "growth_mib": round((after - before) / MiB, 2),
            "allowed_mib": round(allowed / MiB, 2),
            "ok": after - before <= allowed,
        }
    return growth


def profiles(st: Stack, owner: Any, token: str, manual_id: str, runs: int) -> dict[str, Any]:
    """py-spy of the step path (the worker during a round) and of the fire path (worker and beat
    while 200 interval tasks fire together every 10 s)."""
    from django.utils import timezone

    from ordinaut_site.audit import Actor
    from tasks import services

    found: dict[str, Any] = {}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    step_focus = r"runs/|tasks/|pipelines/|ordinaut_site/|celery/(app/trace|worker)|kombu|psycopg"
    seconds = 20
    out = stack.py_spy_record(
        st.worker.pid, seconds, stack.PROFILE_DIR / f"b6-step-path-{stamp}.txt", subprocesses=True
    )
    if out is None:
        say("profiles skipped: py-spy is not installed (make .venv/.dev installs it)")
        return {"skipped": "py-spy not installed"}
    say(f"profile of the step path: py-spy on the worker for {seconds}s while runs are created")
    since = timezone.now()
    accepted = create_runs(st.web.base, token, manual_id, runs)
    stack.py_spy_wait()
    finish_round(since, accepted)
    if out.exists():
        found["step_path"] = stack.profile_summary(out, focus=step_focus)

    actor = Actor.system("bench")
    for number in range(200):
        services.task_create(
            owner=owner,
            actor=actor,
            fields={
                "title": f"B6 fire path #{number}",
                "schedule_kind": "interval",
                "schedule_expr": "10",
                "overlap": "allow",
                "payload": {"pipeline": pipeline(1)},
            },
        )
    time.sleep(3)  # beat picks the new rows up (it looks for changes every second)
    seconds = 25
    say(f"profile of the fire path: py-spy on the worker and beat for {seconds}s (200 tasks every 10 s)")
    worker_out = stack.py_spy_record(
        st.worker.pid, seconds, stack.PROFILE_DIR / f"b6-fire-path-worker-{stamp}.txt", subprocesses=True
    )
    beat_out = stack.py_spy_record(st.beat.pid, seconds, stack.PROFILE_DIR / f"b6-fire-path-beat-{stamp}.txt")
    stack.py_spy_wait()
    fire_focus = r"tasks/|runs/services|ordinaut_site/|celery/(app/trace|beat)|kombu|psycopg"
    if worker_out and worker_out.exists():
        found["fire_path_worker"] = stack.profile_summary(worker_out, focus=fire_focus)
    if beat_out and beat_out.exists():
        found["fire_path_beat"] = stack.profile_summary(beat_out, focus=fire_focus)
    for name, summary in found.items():
        say(f"profile {name}: {summary['file']}")
        for row in [r for r in summary["inclusive"] if "site-packages" not in r["function"]][:8]:
            say(f"    {row['share'] * 100:5.1f}%  {row['function']}")
    return found


def drop_queues() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = [*client.scan_iter(match=f"{os.environ['CELERY_QUEUE']}*"), *client.scan_iter(match="bench:b6:*")]
    if keys:
        client.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runs = args.runs or (150 if args.quick else 600)
    stack.one_at_a_time("bench_memory")
    load_at_start = stack.loadavg()
    os.environ["ORDINAUT_EVENT_STREAM"] = f"bench:b6:{uuid.uuid4().hex[:8]}"
    stack.django_setup(
        database_url=stack.bench_database_url("ordinaut_bench_memory"),
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/6"),
        queue_prefix="bench-b6",
    )
    from django.db import connection
    from django.utils import timezone

    say(
        f"load average {load_at_start}; database {connection.settings_dict['NAME']}, queue {os.environ['CELERY_QUEUE']}"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE runs_steprun, runs_approval, runs_run, tasks_event, tasks_rruleschedule, tasks_task, "
            "django_celery_beat_periodictask, django_celery_beat_intervalschedule, ordinaut_idempotencyrecord CASCADE"
        )
    owner, token = stack.bench_agent(["tasks:read", "tasks:write", "events:publish"])
    made = make_tasks(owner)
    manual_id = str(made["manual"].pk)
    st = Stack()
    report: dict[str, Any] = {"benchmark": "B6", "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick}
    report["runs_per_round"] = runs
    report["rounds"] = []
    try:
        st.start()
        say(
            f"web {st.web.pid}, worker {st.worker.pid} (pool {stack.children(st.worker.pid)}), beat {st.beat.pid}, "
            f"events {st.events.pid}; rss at start: {json.dumps(summary_mib(st.rss()))}"
        )
        report["rss_at_start"] = st.rss()
        for number in range(1, args.rounds + 1):
            since = timezone.now()
            say(f"round {number}/{args.rounds}: {runs} runs of a {STEPS}-step pipeline (half run_now, half events)")
            accepted = create_runs(st.web.base, token, manual_id, runs)
            outcome = finish_round(since, accepted)
            time.sleep(2)
            rss = st.rss()
            report["rounds"].append({"accepted": accepted, **outcome, "rss": rss})
            done = f"{outcome['succeeded']}/{runs} succeeded in {outcome['elapsed_s']}s"
            say(f"round {number}: {done}; rss {json.dumps(summary_mib(rss))}")
        report["growth"] = verdict(report["rounds"])
        report["goal"] = f"each process: last round's RSS <= first round's + max({GROWTH_TOLERANCE:.0%}, 4 MiB)"
        report["goal_met"] = all(row["ok"] for row in report["growth"].values()) and all(
            r["succeeded"] == runs for r in report["rounds"]
        )
        for role, row in report["growth"].items():
            say(
                f"B6 {role}: {row['first_round_mib']} MiB after round 1, {row['last_round_mib']} MiB after round "
                f"{args.rounds} ({row['growth_mib']:+} MiB, allowed {row['allowed_mib']}): "
                + ("ok" if row["ok"] else "GREW")
            )
        if args.profile:
            report["profiles"] = profiles(st, owner, token, manual_id, runs)
    finally:
        st.stop()
        drop_queues()
    report["machine"] = stack.machine(load_at_start)
    say(
        f"B6 goal {'met' if report.get('goal_met') else 'NOT met'}; "
        f"load average at the end {report['machine']['loadavg_at_end']}"
    )
    Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    say(f"report written to {args.report}")
    return 0


def summary_mib(rss: dict[str, Any]) -> dict[str, float]:
    return {role: round(row["rss_bytes"] / MiB, 1) for role, row in rss.items()}


if __name__ == "__main__":
    sys.exit(main())
