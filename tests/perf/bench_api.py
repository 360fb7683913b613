"""B4 and B5 (docs/benchmarks.md): the agents' API through the ASGI server as shipped.

Run:  .venv/bin/python tests/perf/bench_api.py --quick    (about 2 minutes)
      .venv/bin/python tests/perf/bench_api.py            (about 9 minutes)
      make bench QUICK=1                                  (with B1-B3 and B6, one report)

B4: POST /tasks (a cron task with a 3-step pipeline) requests per second through deploy/Procfile's
`web` line, against a trivial DRF create endpoint (tests/perf/bare_api.py: one serializer field,
one INSERT) served by the same command line (only the ASGI app swapped), on the same PostgreSQL.
Load from wrk (Debian's `wrk`; POST bodies from a Lua script), -t1 -c8, in alternating rounds; the
ratio is the median of the rounds' ratios (goal >= 0.5x). Then Ordinaut at half of its peak, paced
by wrk's per-connection delay, for the latency (goal p99 <= 50 ms). The baseline is the faster of
two setups of the bare app: Django as configured (a thread per request, DB_CONN_MAX_AGE) and the
request threads Ordinaut's web uses (ordinaut_site/middleware.py). The web's CPU per request
(from /proc) is reported beside each figure: it says more than requests per second on a busy
machine. A py-spy profile of the web during one more peak run is saved with the report.

B5: POST /events -> run queued. An event task (overlap allow, one step) matches every event; the
events consumer (the Procfile's `events` line) turns each into a run. Latency: events published one
at a time at --event-rate per second; each event's latency is its run's created_at minus the moment
just before its POST was sent, on the same clock (goal p99 <= 50 ms). Throughput: wrk POST /events
with the consumer running, against the same publish with no consumer running, in alternating
rounds (goal >= 0.9x); before each round with the consumer, it first catches up with the events
of the round before. No worker runs: the runs' first steps wait in a private queue, deleted after.

It uses database `ordinaut_bench_api` as the role `ordinaut_bench` (see tests/perf/stack.py; set
DATABASE_URL to change it) and Redis database 7 (REDIS_URL). Rate limits are off, as in the
issue's measurement; the full run also measures POST /tasks with them on (set high enough never to
refuse) and with an Idempotency-Key on every request. Progress lines go to stdout, the report to
perf-report-b4b5.json (--report), the processes' logs to var/bench-logs/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf import stack

say = stack.make_say("b4b5")
B4_RATIO_GOAL = 0.5
B4_P99_GOAL_MS = 50.0
B5_P99_GOAL_MS = 50.0
B5_RATIO_GOAL = 0.9
CONNECTIONS = 8
# The profile's lines worth printing: Ordinaut's own code and what it calls by name, not the layers
# every request passes through (middleware adapters, the view dispatch).
APP_FRAMES = r"\((tasks|pipelines|runs)/|ordinaut_site/(?!middleware)|django_celery_beat|rest_framework/serializers"
TOPIC = "bench.b5"
TASK_BODY = {
    "title": "B4 cron task",
    "schedule_kind": "cron",
    "schedule_expr": "0 9 * * 1-5",
    "timezone": "Europe/Chisinau",
    "payload": {
        "params": {"who": "bench"},
        "pipeline": [
            {"id": "fetch", "uses": "orchestrator.echo", "with": {"who": "${params.who}"}},
            {"id": "shape", "uses": "orchestrator.echo", "with": {"seen": "${steps.fetch.who}"}},
            {"id": "report", "uses": "orchestrator.echo", "with": {"done": True}},
        ],
    },
}
BARE_BODY = {"title": "B4 cron task"}
EVENT_BODY = {"topic": TOPIC, "payload": {"subject": "Invoice 42", "amount": 12.5}, "source": "bench"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs and fewer rounds: about 2 minutes")
    parser.add_argument("--seconds", type=float, help="length of each wrk run (default 15, quick 6)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison (default 4, quick 2)")
    parser.add_argument("--events", type=int, help="B5 latency samples (default 600, quick 100)")
    parser.add_argument("--event-rate", type=float, default=20.0, help="B5 latency: events published per second")
    parser.add_argument("--only", choices=["b4", "b5"], help="run one of the two")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile of the web")
    parser.add_argument("--report", default=str(stack.BASE_DIR / "perf-report-b4b5.json"))
    return parser


# --- Servers --------------------------------------------------------------------------------------


def web_env(**extra: str) -> dict[str, str]:
    # No metrics ports of other roles are opened by the web; the events consumer's is turned off
    # (other suites on the machine use the default ports).
    return {"ORDINAUT_METRICS_PORT_EVENTS": "0", **extra}


def ordinaut_web(**env: str) -> stack.Proc:
    return stack.Proc.role("web", name="b4-web", env=web_env(**env), port=stack.free_port()).start()


def bare_web(*, request_threads: bool) -> stack.Proc:
    from ordinaut_site.middleware import REQUEST_THREADS

    command = stack.procfile_command("web")
    app = "ordinaut_site.asgi:application"
    if app not in command:
        raise SystemExit(f"deploy/Procfile's web line does not serve {app}; update bench_api.py")
    env = {"BARE_API_REQUEST_THREADS": str(REQUEST_THREADS if request_threads else 0)}
    name = "b4-bare-threads" if request_threads else "b4-bare"
    command = command.replace(app, "tests.perf.bare_api:application")
    return stack.Proc(name, command, env=env, port=stack.free_port()).start()


def run_wrk(
    server: stack.Proc, path: str, script: str, seconds: float, connections: int = CONNECTIONS
) -> stack.WrkResult:
    return stack.wrk(
        server.base + path, script, seconds=seconds, connections=connections, server_pids=lambda: stack.tree(server.pid)
    )


def post_script(body: dict[str, Any], token: str | None = None, **options: Any) -> str:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return stack.lua_script(method="POST", headers=headers, body=json.dumps(body), **options)


def figures(result: stack.WrkResult) -> str:
    lat = result.latency_ms
    text = f"{result.per_s:.1f} req/s, p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms"
    text += f", {result.cpu_ms_per_request} ms CPU/request"
    return text + (f", {result.errors} ERRORS" if result.errors else "")


# --- B4 -------------------------------------------------------------------------------------------


def b4(args: argparse.Namespace, token: str, seconds: float, rounds: int) -> dict[str, Any]:
    ours_script = post_script(TASK_BODY, token)
    bare_script = post_script(BARE_BODY)
    report: dict[str, Any] = {"connections": CONNECTIONS, "seconds_per_run": seconds, "rounds": []}

    # The baseline: the faster of the bare app's two setups (the slower one would flatter the ratio).
    trials = {}
    for request_threads in (False, True):
        label = "request threads" if request_threads else "a thread per request (Django's default)"
        with bare_web(request_threads=request_threads) as bare:
            run_wrk(bare, "/items", bare_script, 3)
            result = run_wrk(bare, "/items", bare_script, seconds)
            result.raw = ""
            trials[label] = result
            say(f"B4 baseline trial, {label}: {figures(result)}")
        time.sleep(1)  # its connections are gone with it
    best_label = max(trials, key=lambda k: (trials[k].errors == 0, trials[k].per_s))
    report["baseline_trials"] = {k: v.summary() for k, v in trials.items()}
    report["baseline_is"] = f"tests/perf/bare_api.py, {best_label}, same uvicorn command line"

    with ordinaut_web() as ours, bare_web(request_threads="request threads" in best_label) as bare:
        run_wrk(ours, "/tasks", ours_script, 3)
        run_wrk(bare, "/items", bare_script, 3)
        for number in range(1, rounds + 1):
            base = run_wrk(bare, "/items", bare_script, seconds)
            mine = run_wrk(ours, "/tasks", ours_script, seconds)
            ratio = mine.per_s / base.per_s if base.per_s else 0.0
            report["rounds"].append({"baseline": base.summary(), "ordinaut": mine.summary(), "ratio": round(ratio, 3)})
            say(f"B4 round {number}/{rounds}: baseline {figures(base)}")
            say(f"B4 round {number}/{rounds}: ordinaut {figures(mine)} = {ratio:.2f}x")
        bare.stop()

        peak = stack.median(r["ordinaut"]["per_s"] for r in report["rounds"])
        report["paced"] = paced(ours, "/tasks", TASK_BODY, token, rate=peak / 2, seconds=seconds)
        if not args.no_profile:
            report["profile"] = profile_web(ours, ours_script, seconds)
        if not args.quick:
            report["with_idempotency_key"] = run_wrk(
                ours, "/tasks", post_script(TASK_BODY, token, unique_header="Idempotency-Key"), seconds
            ).summary()
            say(f"B4 with an Idempotency-Key on each request: {report['with_idempotency_key']['per_s']} req/s")
    if not args.quick:
        limits = {name: "1000000/min" for name in ("ORDINAUT_RATE_LIMIT", "ORDINAUT_WRITE_RATE_LIMIT")}
        with ordinaut_web(**limits) as limited:
            run_wrk(limited, "/tasks", ours_script, 3)
            report["with_rate_limits_on"] = run_wrk(limited, "/tasks", ours_script, seconds).summary()
            say(f"B4 with rate limits on (never reached): {report['with_rate_limits_on']['per_s']} req/s")

    base_rounds = [r["baseline"] for r in report["rounds"]]
    ours_rounds = [r["ordinaut"] for r in report["rounds"]]
    report["baseline_per_s"] = round(stack.median(r["per_s"] for r in base_rounds), 2)
    report["ordinaut_per_s"] = round(stack.median(r["per_s"] for r in ours_rounds), 2)
    report["baseline_cpu_ms_per_request"] = stack.median(r["server_cpu_ms_per_request"] for r in base_rounds)
    report["ordinaut_cpu_ms_per_request"] = stack.median(r["server_cpu_ms_per_request"] for r in ours_rounds)
    report["ratio"] = round(stack.median(r["ratio"] for r in report["rounds"]), 3)
    report["ratio_is"] = "median of the rounds' ratios (requests per second)"
    report["errors"] = sum(r["non_2xx"] + sum(r["socket_errors"].values()) for r in base_rounds + ours_rounds)
    report["goal"] = {"ratio": B4_RATIO_GOAL, "p99_ms_at_half_peak": B4_P99_GOAL_MS}
    p99 = report["paced"]["result"]["latency_ms"].get("p99", float("inf"))
    report["goal_met"] = report["ratio"] >= B4_RATIO_GOAL and p99 <= B4_P99_GOAL_MS and report["errors"] == 0
    say(
        f"B4: ordinaut {report['ordinaut_per_s']} req/s vs baseline {report['baseline_per_s']} req/s (medians): "
        f"{report['ratio']:.2f}x (goal >= {B4_RATIO_GOAL}x); p99 at half peak {p99} ms (goal <= {B4_P99_GOAL_MS})"
    )
    return report


def paced(
    server: stack.Proc, path: str, body: dict[str, Any], token: str, *, rate: float, seconds: float
) -> dict[str, Any]:
    """`rate` requests per second: each connection waits between its requests; one calibration run
    corrects the wait for the requests' own latency, so the achieved rate is close to `rate`."""
    connections = 4
    delay_ms = connections * 1000 / rate
    calibration = run_wrk(server, path, post_script(body, token, delay_ms=delay_ms), max(3.0, seconds / 3), connections)
    if calibration.per_s:
        latency_ms = connections * 1000 / calibration.per_s - delay_ms
        delay_ms = connections * 1000 / rate - latency_ms
    result = run_wrk(server, path, post_script(body, token, delay_ms=delay_ms), seconds, connections)
    say(f"B4 at half of peak ({rate:.1f} req/s wanted, {result.per_s:.1f} achieved): {figures(result)}")
    return {
        "wanted_per_s": round(rate, 2),
        "connections": connections,
        "delay_ms": round(delay_ms, 2),
        "result": result.summary(),
        "method": "wrk with a fixed wait per connection between requests (closed loop; no wrk2 in Debian)",
    }


def profile_web(server: stack.Proc, script: str, seconds: float) -> dict[str, Any]:
    out = stack.PROFILE_DIR / f"b4-web-post-tasks-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    started = stack.py_spy_record(server.pid, seconds, out, rate=100)
    if started is None:
        say("B4 profile skipped: py-spy is not installed (make .venv/.dev installs it)")
        return {"skipped": "py-spy not installed"}
    time.sleep(0.5)
    result = run_wrk(server, "/tasks", script, seconds + 1)
    stack.py_spy_wait()
    if not out.exists():
        return {"skipped": "py-spy wrote nothing (ptrace not permitted?)"}
    summary = stack.profile_summary(
        out, top=60, focus=r"ordinaut_site/|tasks/|pipelines/|runs/|django_celery_beat|rest_framework/|psycopg|asgiref"
    )
    say(f"B4 profile of the web under load ({result.per_s:.1f} req/s while sampled): {out}")
    shown = [r for r in summary["inclusive"] if re.search(APP_FRAMES, r["function"])]
    for row in shown[:12]:
        say(f"    {row['share'] * 100:5.1f}%  {row['function']}")
    return {"per_s_while_sampled": result.per_s, **summary}


# --- B5 -------------------------------------------------------------------------------------------


def b5(args: argparse.Namespace, owner: Any, token: str, seconds: float, rounds: int) -> dict[str, Any]:
    import httpx2
    from django.db.models import Count

    from ordinaut_site.audit import Actor
    from runs.models import Run
    from tasks import services
    from tasks.models import Event

    task = services.task_create(
        owner=owner,
        actor=Actor.system("bench"),
        fields={
            "title": "B5 event task",
            "schedule_kind": "event",
            "schedule_expr": TOPIC,
            "overlap": "allow",
            "payload": {
                "pipeline": [{"id": "read", "uses": "orchestrator.echo", "with": {"s": "${event.payload.subject}"}}]
            },
        },
    )
    samples = args.events or (100 if args.quick else 600)
    report: dict[str, Any] = {"event_task_overlap": "allow", "rounds": []}
    script = post_script(EVENT_BODY, token)

    def backlog() -> int:
        return Event.objects.filter(consumed_at__isnull=True).count()

    def consumer() -> stack.Proc:
        return stack.Proc.role("events", name="b5-events", env=web_env()).start()

    def catch_up(limit_s: float = 120) -> float:
        started = time.monotonic()
        while backlog() and time.monotonic() - started < limit_s:
            time.sleep(0.2)
        return time.monotonic() - started

    with ordinaut_web() as web:
        run_wrk(web, "/events", script, 3)
        # Latency: one event at a time, paced, with the consumer running.
        with consumer():
            catch_up()
            sent: dict[str, float] = {}
            publish_ms: list[float] = []
            headers = {"Authorization": f"Bearer {token}"}
            with httpx2.Client(base_url=web.base, headers=headers, timeout=10) as client:
                gap = 1 / args.event_rate
                next_at = time.monotonic()
                for number in range(samples):
                    next_at += gap
                    before = time.time()
                    response = client.post("/events", json=EVENT_BODY)
                    publish_ms.append((time.time() - before) * 1000)
                    if response.status_code != 202:
                        raise SystemExit(f"POST /events answered {response.status_code}: {response.text[:300]}")
                    sent[f"event:{response.json()['id']}"] = before
                    if (number + 1) % max(1, samples // 5) == 0:
                        say(f"B5 latency: {number + 1}/{samples} events published")
                    time.sleep(max(0.0, next_at - time.monotonic()))
            deadline = time.monotonic() + 60
            runs = Run.objects.filter(task=task, trigger_key__in=list(sent))
            while runs.count() < len(sent) and time.monotonic() < deadline:
                time.sleep(0.2)
            created = dict(runs.values_list("trigger_key", "created_at"))
            statuses = dict(runs.values("status").annotate(n=Count("id")).values_list("status", "n"))
        latencies = [(created[key].timestamp() - at) * 1000 for key, at in sent.items() if key in created]
        report["latency"] = {
            "events": samples,
            "rate_per_s": args.event_rate,
            "runs_created": len(latencies),
            "run_statuses": statuses,
            "ms": {
                "p50": round(stack.median(latencies), 2),
                "p99": round(stack.percentile(latencies, 0.99), 2) if latencies else None,
                "max": round(max(latencies), 2) if latencies else None,
            },
            "publish_response_ms": {
                "p50": round(stack.median(publish_ms), 2),
                "p99": round(stack.percentile(publish_ms, 0.99), 2),
            },
            "is": "run created_at minus the moment before POST /events was sent (same clock)",
        }
        lat = report["latency"]["ms"]
        say(
            f"B5 latency POST /events -> run queued over {len(latencies)}/{samples} events: p50 {lat['p50']} ms, "
            f"p99 {lat['p99']} ms, max {lat['max']} ms (goal p99 <= {B5_P99_GOAL_MS}); the POST itself p50 "
            f"{report['latency']['publish_response_ms']['p50']} ms"
        )

        # Throughput: the same publish without a consumer, then with one, alternating.
        for number in range(1, rounds + 1):
            alone = run_wrk(web, "/events", script, seconds)
            with consumer():
                waited = catch_up()
                during = run_wrk(web, "/events", script, seconds)
                lag = backlog()
            ratio = during.per_s / alone.per_s if alone.per_s else 0.0
            report["rounds"].append(
                {
                    "without_consumer": alone.summary(),
                    "with_consumer": during.summary(),
                    "consumer_caught_up_in_s": round(waited, 2),
                    "consumer_backlog_at_end": lag,
                    "ratio": round(ratio, 3),
                }
            )
            say(f"B5 round {number}/{rounds}: without consumer {figures(alone)}")
            say(f"B5 round {number}/{rounds}: with consumer    {figures(during)} = {ratio:.2f}x; backlog at end {lag}")
    report["without_consumer_per_s"] = round(stack.median(r["without_consumer"]["per_s"] for r in report["rounds"]), 2)
    report["with_consumer_per_s"] = round(stack.median(r["with_consumer"]["per_s"] for r in report["rounds"]), 2)
    report["ratio"] = round(stack.median(r["ratio"] for r in report["rounds"]), 3)
    report["ratio_is"] = "median of the rounds' ratios (publishes per second)"
    report["errors"] = sum(
        r[side]["non_2xx"] + sum(r[side]["socket_errors"].values())
        for r in report["rounds"]
        for side in ("without_consumer", "with_consumer")
    )
    # The ratio alone would flatter a consumer that falls behind: what it left unconsumed as each
    # round's publishing ended, at most a second's worth of publishes, says it kept up.
    report["consumer_backlog_at_end_max"] = max(r["consumer_backlog_at_end"] for r in report["rounds"])
    report["consumer_kept_up"] = report["consumer_backlog_at_end_max"] <= max(1.0, report["with_consumer_per_s"])
    report["goal"] = {
        "latency_p99_ms": B5_P99_GOAL_MS,
        "ratio": B5_RATIO_GOAL,
        "consumer_backlog_at_end": "at most one second of publishes",
    }
    p99 = report["latency"]["ms"]["p99"]
    report["goal_met"] = (
        p99 is not None
        and p99 <= B5_P99_GOAL_MS
        and report["ratio"] >= B5_RATIO_GOAL
        and report["errors"] == 0
        and report["latency"]["runs_created"] == samples
        and report["consumer_kept_up"]
    )
    say(
        f"B5: publish {report['with_consumer_per_s']}/s with the consumer vs {report['without_consumer_per_s']}/s "
        f"without: {report['ratio']:.2f}x (goal >= {B5_RATIO_GOAL}x), the consumer's backlog at the end of a round "
        f"at most {report['consumer_backlog_at_end_max']} events "
        f"({'kept up' if report['consumer_kept_up'] else 'fell behind'})"
    )
    return report


# --- Main -----------------------------------------------------------------------------------------


def reset() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE runs_steprun, runs_approval, runs_run, tasks_event, tasks_rruleschedule, tasks_task, "
            "django_celery_beat_periodictask, django_celery_beat_crontabschedule, ordinaut_idempotencyrecord CASCADE"
        )
        cursor.execute("DROP TABLE IF EXISTS bench_bare_item")  # the bare app creates it at start-up


def drop_queues(stream: str) -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    queue = os.environ["CELERY_QUEUE"]
    keys = [*client.scan_iter(match=f"{queue}*"), *client.scan_iter(match=f"{stream}*")]
    if keys:
        client.delete(*keys)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stack.wrk_path()
    stack.one_at_a_time("bench_api")
    seconds = args.seconds or (6.0 if args.quick else 15.0)
    rounds = args.rounds or (2 if args.quick else 4)
    load_at_start = stack.loadavg()
    stream = f"bench:b5:{uuid.uuid4().hex[:8]}"
    os.environ["ORDINAUT_EVENT_STREAM"] = stream
    database_url = stack.bench_database_url("ordinaut_bench_api")
    stack.django_setup(
        database_url=database_url,
        redis_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/7"),
        queue_prefix="bench-b4b5",
    )
    from django.conf import settings
    from django.db import connection

    say(f"load average {load_at_start}; database {connection.settings_dict['NAME']}, redis {settings.REDIS_URL}")
    say(f"web: {stack.procfile_command('web')}")
    reset()
    owner, token = stack.bench_agent(["tasks:read", "tasks:write", "events:publish"])
    connection.close()
    report: dict[str, Any] = {"benchmark": "B4/B5", "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "quick": args.quick}
    report["web_command"] = stack.procfile_command("web")
    report["rate_limits"] = "off"
    try:
        if args.only in (None, "b4"):
            report["b4"] = b4(args, token, seconds, rounds)
        if args.only in (None, "b5"):
            report["b5"] = b5(args, owner, token, seconds, rounds)
    finally:
        drop_queues(stream)
    report["machine"] = stack.machine(load_at_start)
    say(f"load average at the end {report['machine']['loadavg_at_end']}")
    Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    say(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
