"""B1 and B2 (docs/benchmarks.md): 5-step no-op pipeline runs against a bare 5-task Celery chain.

Run:  .venv/bin/python tests/perf/bench_pipeline.py            (about 3 minutes)
      .venv/bin/python tests/perf/bench_pipeline.py --quick    (about 1 minute)

One real Ordinaut worker (prefork, concurrency 2, as shipped) consumes a private queue, on a database of
its own (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/ordinaut_bench_pipeline) and
Redis database 9. Both sides are measured in the same run, same broker, same worker:

- B1 throughput: N runs of a 5-step orchestrator.echo pipeline (outputs persisted), created
  through run_create as fast as possible, until all succeeded; against N bare chains of 5 no-op
  jobs (the last one counts itself done in Redis) on a bare Celery app (tests/perf/bare_app.py:
  no Django, no Ordinaut handlers, Ordinaut's worker settings, its own worker with the same pool,
  concurrency and flags). The baseline has task events on, as Ordinaut's workers do (Flower needs
  them); the same bare app without events is the floor, reported beside it. Rounds alternate
  (bare, bare without events, pipeline, ...) and the figures are the medians of the rounds'
  ratios. Goal: >= 0.7x the bare chains per second (stretch 0.8x).
- B2 per-step overhead, unloaded: M runs one at a time, alternating with M bare chains (events
  on); (run wall time / 5) minus the bare chain's median per-hop time (chain wall time / 5). Goal: p50 <= 2.5 ms,
  p99 <= 10 ms. Wall time is from just before the run is created (or the chain sent) to its
  finished_at (or the last job's timestamp), on the same clock.

Alternating makes other load on the machine weigh on both sides alike; the report also records
the load average.

Progress lines go to stdout; a JSON report to perf-report-b1b2.json (or --report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordinaut_bench_pipeline")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/9")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
os.environ["CELERY_QUEUE"] = f"bench-b1b2-{uuid.uuid4().hex[:8]}"

import django  # noqa: E402

from tests.perf import stack  # noqa: E402

django.setup()

import subprocess  # noqa: E402

import psycopg  # noqa: E402
import redis  # noqa: E402
from celery import chain, signature  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from ordinaut_site.audit import Actor  # noqa: E402
from ordinaut_site.celery import app  # noqa: E402
from ordinaut_site.queues import queue_config  # noqa: E402
from ordinaut_site.services import agent_create  # noqa: E402
from runs.models import Run  # noqa: E402
from runs.services import run_create  # noqa: E402
from tests.perf import bare_app  # noqa: E402
from tests.support.pipelines import echo_pipeline, make_task  # noqa: E402
from tests.support.processes import Worker, wait_for  # noqa: E402

for _name, _value in queue_config(os.environ["CELERY_QUEUE"]).items():
    setattr(app.conf, _name, _value)
app.set_current()  # Ordinaut's jobs go through current_app; the bare app is only used explicitly
STEPS = 5
LOG_DIR = BASE_DIR / "var" / "bench-logs"
# Polling only decides when the next sample starts (times come from the records), so it can be
# lazy, and leave the CPU to the worker being measured.
POLL_S = 0.02
# B1 counts finished runs (or chains) this often: often enough for the timing, rarely enough not
# to load the database it measures.
COUNT_POLL_S = 0.1
PROGRESS_EVERY_S = 2.0
B1_GOAL, B1_STRETCH = 0.7, 0.8
B2_P50_GOAL_MS, B2_P99_GOAL_MS = 2.5, 10.0


def say(message: str) -> None:
    print(f"[b1b2 {datetime.now():%H:%M:%S}] {message}", flush=True)


def ensure_database() -> None:
    s = connection.settings_dict
    params = {"host": s.get("HOST") or "127.0.0.1", "port": s.get("PORT") or 5432, "user": s.get("USER") or "postgres"}
    if s.get("PASSWORD"):
        params["password"] = s["PASSWORD"]
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [s["NAME"]]).fetchone():
            admin.execute(f'CREATE DATABASE "{s["NAME"]}"')
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE runs_steprun, runs_approval, runs_run, tasks_task CASCADE")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# --- Baseline: bare chains -----------------------------------------------------------------------


class BareWorker:
    """`celery -A tests.perf.bare_app worker` with the Ordinaut worker's pool, concurrency and flags,
    on a queue of its own; `events` as Ordinaut's workers send them (or not: the floor)."""

    def __init__(self, *, events: bool) -> None:
        self.events = events
        self.queue = f"bench-bare-{'events' if events else 'noevents'}-{uuid.uuid4().hex[:6]}"
        self.name = f"{self.queue}@bench"
        self.log_path = LOG_DIR / f"{self.queue}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BareWorker:
        env = {**os.environ, "BARE_QUEUE": self.queue, "BARE_EVENTS": "1" if self.events else "0"}
        command = [sys.executable, "-m", "celery", "-A", "tests.perf.bare_app", "worker", "-P", "prefork"]
        command += ["-c", "2", "-n", self.name, "-Q", self.queue, "--without-mingle", "--without-gossip"]
        command += ["-l", "WARNING"]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, env=env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT)
        wait_for(
            lambda: bool(bare_app.app.control.ping(destination=[self.name], timeout=0.5)),
            timeout=60,
            message=f"bare worker {self.name} (log {self.log_path})",
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def chain(self, key: str) -> Any:
        links = [signature("bench.noop", immutable=True, app=bare_app.app) for _ in range(STEPS - 1)]
        links.append(signature("bench.chain_done", args=(key,), immutable=True, app=bare_app.app))
        return chain(*links).set(queue=self.queue)


def baseline_throughput(client: redis.Redis, bare: BareWorker, count: int) -> dict[str, float]:
    key = f"bench:b1:{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    for _ in range(count):
        bare.chain(key).apply_async(queue=bare.queue)
    what = "bare chains" + ("" if bare.events else " without events")
    say(f"B1 {what}: {count} sent in {time.monotonic() - started:.1f}s")
    done = _wait_count(lambda: int(client.get(f"{key}:count") or 0), count, started, f"B1 {what}")
    elapsed = time.monotonic() - started
    return {"chains": count, "done": done, "elapsed_s": round(elapsed, 3), "per_s": round(done / elapsed, 2)}


def baseline_latency(client: redis.Redis, bare: BareWorker, count: int, *, quiet: bool = False) -> list[float]:
    walls = []
    for i in range(count):
        key = f"bench:b2:{uuid.uuid4().hex[:8]}"
        t0 = time.time()
        bare.chain(key).apply_async(queue=bare.queue)
        while not client.get(f"{key}:count"):
            time.sleep(POLL_S)
        walls.append(float(client.get(f"{key}:last") or 0) - t0)
        if not quiet:
            _progress_every(i + 1, count, "baseline chains")
    return walls


# --- Ordinaut: pipeline runs ---------------------------------------------------------------------


def pipeline_throughput(task: Any, count: int) -> dict[str, float]:
    Run.objects.filter(task=task).delete()  # this round's runs are then all the task has
    started = time.monotonic()
    for _ in range(count):
        run_create(task=task, trigger="manual")
    say(f"B1 ordinaut: {count} runs created in {time.monotonic() - started:.1f}s")
    runs = Run.objects.filter(task=task)
    done = _wait_count(lambda: runs.filter(status__in=Run.TERMINAL).count(), count, started, "B1 ordinaut runs")
    elapsed = time.monotonic() - started
    succeeded = runs.filter(status=Run.Status.SUCCEEDED).count()
    return {
        "runs": count,
        "done": done,
        "succeeded": succeeded,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(succeeded / elapsed, 2),
    }


def pipeline_latency(task: Any, count: int, *, quiet: bool = False) -> list[float]:
    walls = []
    for i in range(count):
        t0 = time.time()
        run = run_create(task=task, trigger="manual")
        finished = Run.objects.filter(pk=run.pk, status__in=Run.TERMINAL).values_list("status", "finished_at")
        while not (row := finished.first()):
            time.sleep(POLL_S)
        status, finished_at = row
        if status != Run.Status.SUCCEEDED:
            raise SystemExit(f"run {run.pk} ended {status}; see {LOG_DIR}")
        walls.append(finished_at.timestamp() - t0)
        if not quiet:
            _progress_every(i + 1, count, "pipeline runs")
    return walls


# --- Plumbing ------------------------------------------------------------------------------------

_last_progress = [0.0]


def _progress_every(done: int, total: int, what: str) -> None:
    now = time.monotonic()
    if now - _last_progress[0] >= PROGRESS_EVERY_S or done == total:
        _last_progress[0] = now
        say(f"{what}: {done}/{total}")


def _wait_count(counter: Any, total: int, started: float, what: str, limit_s: float = 600) -> int:
    done = 0
    while done < total:
        if time.monotonic() - started > limit_s:
            say(f"{what}: gave up after {limit_s}s at {done}/{total}")
            break
        time.sleep(COUNT_POLL_S)
        done = counter()
        _progress_every(done, total, f"{what} ({done / max(time.monotonic() - started, 1e-9):.0f}/s)")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs: about a minute")
    parser.add_argument("--runs", type=int, help="B1 runs (and chains) per round (default 400, quick 100)")
    parser.add_argument("--rounds", type=int, help="B1 rounds: bare, then pipeline (default 5, quick 3)")
    parser.add_argument("--samples", type=int, help="B2 runs and chains one at a time (default 400, quick 100)")
    parser.add_argument("--report", default=str(BASE_DIR / "perf-report-b1b2.json"))
    args = parser.parse_args()
    stack.one_at_a_time("bench_pipeline")
    runs = args.runs or (100 if args.quick else 400)
    rounds = args.rounds or (3 if args.quick else 5)
    samples = args.samples or (100 if args.quick else 400)

    load_at_start = list(os.getloadavg())
    say(f"database {connection.settings_dict['NAME']}, redis {settings.REDIS_URL}, queue {app.conf.task_default_queue}")
    ensure_database()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    client = redis.Redis.from_url(settings.REDIS_URL)
    owner = agent_create(name=f"bench-{uuid.uuid4().hex[:6]}", scopes=["tasks:write"], actor=Actor.system("bench"))
    task = make_task(owner, echo_pipeline(STEPS), title="B1/B2 echo pipeline")
    worker = Worker(LOG_DIR, concurrency=2, name=f"b1b2-{uuid.uuid4().hex[:6]}@bench").start()
    say(f"worker {worker.name} up (prefork, concurrency 2); log {worker.log_path}")
    bare = BareWorker(events=True).start()
    floor = BareWorker(events=False).start()
    say(f"bare Celery workers up: {bare.name} (task events on), {floor.name} (events off: the floor)")
    # Both sides alternate, round by round and sample by sample, so that whatever else the
    # machine is doing weighs on both alike; each ratio compares neighbours.
    b1_rounds: list[dict[str, Any]] = []
    base_walls: list[float] = []
    ours_walls: list[float] = []
    try:
        say("warm-up")
        baseline_latency(client, bare, 10)
        baseline_latency(client, floor, 10)
        pipeline_latency(task, 10)

        for number in range(1, rounds + 1):
            say(f"B1 round {number}/{rounds}: {runs} bare chains (events on, then off), then {runs} pipeline runs")
            base = baseline_throughput(client, bare, runs)
            no_events = baseline_throughput(client, floor, runs)
            ours = pipeline_throughput(task, runs)
            ratio = ours["per_s"] / base["per_s"] if base["per_s"] else 0.0
            floor_ratio = ours["per_s"] / no_events["per_s"] if no_events["per_s"] else 0.0
            b1_rounds.append(
                {
                    "baseline_bare_chain": base,
                    "floor_bare_chain_without_events": no_events,
                    "ordinaut_pipeline": ours,
                    "ratio": round(ratio, 3),
                    "ratio_to_floor": round(floor_ratio, 3),
                }
            )
            say(
                f"B1 round {number}: bare {base['per_s']} chains/s (no events {no_events['per_s']}), "
                f"ordinaut {ours['per_s']} runs/s = {ratio:.2f}x ({floor_ratio:.2f}x the floor)"
            )

        say(f"B2: {samples} bare chains and {samples} pipeline runs, alternating, one at a time")
        for number in range(samples):
            base_walls.extend(baseline_latency(client, bare, 1, quiet=True))
            ours_walls.extend(pipeline_latency(task, 1, quiet=True))
            _progress_every(number + 1, samples, "B2 pairs")
    finally:
        worker.stop()
        bare.stop()
        floor.stop()

    hop_ms = statistics.median(base_walls) / STEPS * 1000
    overhead_ms = [wall / STEPS * 1000 - hop_ms for wall in ours_walls]
    ratio = statistics.median(r["ratio"] for r in b1_rounds)
    floor_ratio = statistics.median(r["ratio_to_floor"] for r in b1_rounds)
    base_b1 = {"per_s_median": statistics.median(r["baseline_bare_chain"]["per_s"] for r in b1_rounds)}
    floor_b1 = {"per_s_median": statistics.median(r["floor_bare_chain_without_events"]["per_s"] for r in b1_rounds)}
    ours_b1 = {"per_s_median": statistics.median(r["ordinaut_pipeline"]["per_s"] for r in b1_rounds)}
    report: dict[str, Any] = {
        "benchmark": "B1/B2",
        "at": datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine skews both sides; the 1-minute load average says how much.
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": list(os.getloadavg()),
        },
        "worker": {"pool": "prefork", "concurrency": 2, "flags": "--without-mingle --without-gossip"},
        "quick": args.quick,
        "b1": {
            "runs_per_round": runs,
            "rounds": b1_rounds,
            "baseline_bare_chain": base_b1,
            "baseline_is": "bare Celery app, Ordinaut's worker settings, task events on (tests/perf/bare_app.py)",
            "floor_bare_chain_without_events": floor_b1,
            "ordinaut_pipeline": ours_b1,
            "ratio": round(ratio, 3),
            "ratio_to_floor": round(floor_ratio, 3),
            "ratio_is": "median of the rounds' ratios",
            "goal": B1_GOAL,
            "stretch": B1_STRETCH,
            "goal_met": ratio >= B1_GOAL,
        },
        "b2": {
            "samples": samples,
            "baseline_chain_wall_ms": {
                "p50": round(statistics.median(base_walls) * 1000, 2),
                "p99": round(percentile(base_walls, 0.99) * 1000, 2),
            },
            "baseline_per_hop_ms_p50": round(hop_ms, 3),
            "ordinaut_run_wall_ms": {
                "p50": round(statistics.median(ours_walls) * 1000, 2),
                "p99": round(percentile(ours_walls, 0.99) * 1000, 2),
            },
            "per_step_overhead_ms": {
                "p50": round(statistics.median(overhead_ms), 3),
                "p99": round(percentile(overhead_ms, 0.99), 3),
            },
            "goal_ms": {"p50": B2_P50_GOAL_MS, "p99": B2_P99_GOAL_MS},
        },
    }
    b2 = report["b2"]["per_step_overhead_ms"]
    report["b2"]["goal_met"] = b2["p50"] <= B2_P50_GOAL_MS and b2["p99"] <= B2_P99_GOAL_MS
    Path(args.report).write_text(json.dumps(report, indent=2))
    say(
        f"B1: ordinaut {ours_b1['per_s_median']} runs/s vs bare chain {base_b1['per_s_median']} chains/s "
        f"(without events {floor_b1['per_s_median']}; medians); median round ratio {ratio:.2f}x "
        f"(goal >= {B1_GOAL}x, stretch {B1_STRETCH}x), {floor_ratio:.2f}x the no-events floor"
    )
    say(
        f"B2: per-step overhead p50 {b2['p50']} ms, p99 {b2['p99']} ms (goal <= {B2_P50_GOAL_MS} / "
        f"{B2_P99_GOAL_MS} ms); bare chain per hop {hop_ms:.2f} ms"
    )
    say(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
