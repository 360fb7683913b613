"""`make bench`: B1-B6 (docs/benchmarks.md) one after the other, a table at the end and one JSON report.

Run:  make bench            (B1/B2 about 6 min, B3 about 12, B4/B5 about 9, B6 about 4: about 30 minutes)
      make bench QUICK=1    (each one's --quick: about 10 minutes, B3's quick phases wait for their minutes)
      .venv/bin/python tests/perf/bench_all.py [--quick] [--only B4/B5 B6] [--report perf-report.json]
      .venv/bin/python tests/perf/bench_all.py --large   (adds B3 at 100,000 tasks after B3: about 20 minutes
                                                          more; opt-in, never in the default run)

Each benchmark runs as its own process (tests/perf/bench_pipeline.py, bench_scheduler.py, bench_api.py,
bench_memory.py --profile), printing its own progress lines; each measures its baseline in the same run.
This driver prints the load average at the start and the end (the figures of a busy machine are not
those of a quiet one), then a table of every figure against the goals of docs/benchmarks.md, and
writes perf-report.json: the table, each benchmark's own report, and where the profiles are (the web
under POST /tasks, the worker on the step path, the worker and beat on the fire path; collapsed
stacks in var/bench-profiles/, which speedscope.app opens). A benchmark that fails is reported as
such and the others still run; the exit code is 1 when one failed, 0 otherwise (goals not met are
figures, not failures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.perf import stack

say = stack.make_say("bench")
PERF = Path(__file__).resolve().parent
# The goals of docs/benchmarks.md; the benchmarks' own reports may judge by others.
GOALS = {
    "B1": "runs/s >= 0.7x the bare chain (stretch 0.8x)",
    "B2": "per-step overhead p50 <= 2.5 ms, p99 <= 10 ms",
    "B3": "first-step lateness p99 <= 1 s, max <= 2 s; fire p99 <= 0.25 s; 0 missed, 0 duplicates",
    "B3/100k": "0 missed, 0 duplicates, fire p99 <= 1 s; beat's RSS, CPU per tick and start-up reported",
    "B4": "req/s >= 0.5x the bare create; p99 <= 50 ms at half of peak",
    "B5": "POST /events -> run queued p99 <= 50 ms; publish >= 0.9x without the consumer",
    "B6": "no RSS growth after the first round (<= max(5%, 4 MiB))",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick variant")
    parser.add_argument(
        "--large",
        action="store_true",
        help="also B3 at 100,000 tasks (bench_scheduler.py --large, about 20 minutes; never --quick)",
    )
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES + OPT_IN], help="run these only")
    parser.add_argument("--report", default=str(stack.BASE_DIR / "perf-report.json"))
    return parser


class Bench:
    def __init__(self, name: str, script: str, report: str, *extra: str, has_quick: bool = True) -> None:
        self.name, self.script, self.report_name, self.extra = name, script, report, list(extra)
        self.has_quick = has_quick

    def command(self, *, quick: bool, report: Path) -> list[str]:
        return [
            sys.executable,
            str(PERF / self.script),
            *(["--quick"] if quick and self.has_quick else []),
            *self.extra,
            "--report",
            str(report),
        ]


BENCHES = [
    Bench("B1/B2", "bench_pipeline.py", "perf-report-b1b2.json"),
    Bench("B3", "bench_scheduler.py", "perf-report-b3.json"),
    Bench("B4/B5", "bench_api.py", "perf-report-b4b5.json"),
    Bench("B6", "bench_memory.py", "perf-report-b6.json", "--profile"),
]
# Opt-in (--large, or --only B3/100k): not part of the default run, which stays about 30 minutes.
OPT_IN = [Bench("B3/100k", "bench_scheduler.py", "perf-report-b3-large.json", "--large", has_quick=False)]


def run(bench: Bench, *, quick: bool, report_dir: Path) -> dict[str, Any]:
    report_path = report_dir / bench.report_name
    report_path.unlink(missing_ok=True)
    command = bench.command(quick=quick, report=report_path)
    say(f"{bench.name}: {' '.join(command[1:])}")
    started = time.monotonic()
    done = subprocess.run(command, cwd=stack.BASE_DIR, check=False)
    elapsed = round(time.monotonic() - started, 1)
    outcome: dict[str, Any] = {"command": command[1:], "exit_code": done.returncode, "elapsed_s": elapsed}
    if report_path.exists():
        outcome["report_file"] = str(report_path)
        outcome["report"] = json.loads(report_path.read_text())
    say(f"{bench.name}: {'done' if done.returncode == 0 else f'FAILED (exit {done.returncode})'} in {elapsed}s")
    return outcome


def _get(report: dict[str, Any] | None, *path: str) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value}{unit}"


def rows(reports: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The table: one row per figure, judged against GOALS (None where a benchmark did not run)."""
    b12, b3, b45, b6 = (reports.get(name) for name in ("B1/B2", "B3", "B4/B5", "B6"))
    found: list[dict[str, Any]] = []

    def row(bench: str, what: str, baseline: str, ours: str, figure: str, met: bool | None) -> None:
        found.append(
            {
                "id": bench,
                "what": what,
                "baseline": baseline,
                "ordinaut": ours,
                "figure": figure,
                "goal": GOALS[bench],
                "met": met,
            }
        )

    if b12 is not None:
        ratio = _get(b12, "b1", "ratio")
        row(
            "B1",
            "5-step runs/s",
            _fmt(_get(b12, "b1", "baseline_bare_chain", "per_s_median"), " chains/s"),
            _fmt(_get(b12, "b1", "ordinaut_pipeline", "per_s_median"), " runs/s"),
            f"{_fmt(ratio, 'x')} ({_fmt(_get(b12, 'b1', 'ratio_to_floor'), 'x')} the no-events floor)",
            None if ratio is None else ratio >= 0.7,
        )
        p50, p99 = _get(b12, "b2", "per_step_overhead_ms", "p50"), _get(b12, "b2", "per_step_overhead_ms", "p99")
        row(
            "B2",
            "per-step overhead",
            _fmt(_get(b12, "b2", "baseline_per_hop_ms_p50"), " ms/hop"),
            "-",
            f"p50 {_fmt(p50, ' ms')}, p99 {_fmt(p99, ' ms')}",
            None if p50 is None or p99 is None else p50 <= 2.5 and p99 <= 10,
        )
    if b3 is not None:
        ours, base = b3.get("ordinaut") or {}, b3.get("baseline") or {}
        # A run created before its instant (the dispatch lead) is not late: late_p99_s counts it as 0.
        fire_p99 = ours.get("late_p99_s", ours.get("lateness_p99_s"))
        start_p99, start_max = ours.get("start_lateness_p99_s"), ours.get("start_lateness_max_s")
        exact = ours.get("missed") == 0 and ours.get("duplicates") == 0
        row(
            "B3",
            f"{b3.get('tasks')} tasks, {b3.get('due')} due",
            f"p99 {_fmt(base.get('lateness_p99_s'), ' s')}, {base.get('duplicates', '-')} dup",
            f"{ours.get('fired', '-')} fired, {ours.get('missed', '-')} missed, {ours.get('duplicates', '-')} dup",
            f"first step p99 {_fmt(start_p99, ' s')} (max {_fmt(start_max, ' s')}), fire p99 {_fmt(fire_p99, ' s')}",
            None
            if start_p99 is None or fire_p99 is None
            else exact and start_p99 <= 1 and (start_max or 0) <= 2 and fire_p99 <= 0.25,
        )
    large = reports.get("B3/100k")
    if large is not None:
        ours, base = large.get("ordinaut") or {}, large.get("baseline") or {}
        fire_p99 = ours.get("late_p99_s")
        process = ours.get("beat_process") or {}
        row(
            "B3/100k",
            f"{large.get('tasks')} tasks, {large.get('due')} due",
            f"{base.get('fired', '-')} fired, p99 {_fmt(base.get('lateness_p99_s'), ' s')}, "
            f"{base.get('duplicates', '-')} dup",
            f"{ours.get('fired', '-')} fired, {ours.get('missed', '-')} missed, {ours.get('duplicates', '-')} dup",
            f"fire p99 {_fmt(fire_p99, ' s')}, first step p99 {_fmt(ours.get('start_lateness_p99_s'), ' s')}; beat "
            f"start {_fmt(ours.get('beat_startup_s'), ' s')}, RSS {_fmt(process.get('rss_max_mib'), ' MiB')}, CPU p99 "
            f"{_fmt(process.get('cpu_ms_per_s_p99'), ' ms/s')}, {ours.get('beat_full_loads', '-')} full load(s)",
            None if fire_p99 is None else ours.get("missed") == 0 and ours.get("duplicates") == 0 and fire_p99 <= 1,
        )
    b4, b5 = _get(b45, "b4"), _get(b45, "b5")
    if b4 is not None:
        p99 = _get(b4, "paced", "result", "latency_ms", "p99")
        row(
            "B4",
            "POST /tasks req/s",
            _fmt(b4.get("baseline_per_s"), " req/s"),
            _fmt(b4.get("ordinaut_per_s"), " req/s"),
            f"{_fmt(b4.get('ratio'), 'x')}; p99 {_fmt(p99, ' ms')} at half peak; CPU "
            f"{_fmt(b4.get('ordinaut_cpu_ms_per_request'), ' ms')} vs "
            f"{_fmt(b4.get('baseline_cpu_ms_per_request'), ' ms')}/req",
            bool(b4.get("goal_met")),
        )
    if b5 is not None:
        p99 = _get(b5, "latency", "ms", "p99")
        row(
            "B5",
            "POST /events -> run",
            _fmt(b5.get("without_consumer_per_s"), " /s alone"),
            _fmt(b5.get("with_consumer_per_s"), " /s"),
            f"p99 {_fmt(p99, ' ms')}; {_fmt(b5.get('ratio'), 'x')}; "
            f"backlog {_fmt(b5.get('consumer_backlog_at_end_max'))}",
            bool(b5.get("goal_met")),
        )
    if b6 is not None:
        growth = b6.get("growth") or {}
        figure = ", ".join(f"{role} {_fmt(g.get('growth_mib'))} MiB" for role, g in growth.items())
        row("B6", f"RSS over {len(b6.get('rounds', []))} rounds", "-", "-", figure or "-", bool(b6.get("goal_met")))
    return found


def table(found: list[dict[str, Any]]) -> str:
    headers = ["id", "what", "baseline", "ordinaut", "figure", "met"]
    cells = [
        [
            r["id"],
            r["what"],
            r["baseline"],
            r["ordinaut"],
            r["figure"],
            "-" if r["met"] is None else ("yes" if r["met"] else "NO"),
        ]
        for r in found
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line: Callable[[list[str]], str] = lambda cs: " | ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True))  # noqa: E731
    return "\n".join([line(headers), "-+-".join("-" * w for w in widths), *(line(c) for c in cells)])


def profiles(reports: dict[str, dict[str, Any] | None]) -> dict[str, str]:
    found = {}
    if web := _get(reports.get("B4/B5"), "b4", "profile", "file"):
        found["web POST /tasks"] = web
    for name, key in (
        ("step path (worker)", "step_path"),
        ("fire path (worker)", "fire_path_worker"),
        ("fire path (beat)", "fire_path_beat"),
    ):
        if path := _get(reports.get("B6"), "profiles", key, "file"):
            found[name] = path
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    load_at_start = stack.loadavg()
    say(f"load average at the start {load_at_start} ({stack.machine(load_at_start)['cpus']} cores)")
    report_dir = Path(args.report).resolve().parent
    every = [*BENCHES[:2], *OPT_IN, *BENCHES[2:]] if args.large else [*BENCHES, *OPT_IN]
    chosen = [b for b in every if (b.name in args.only if args.only else b in BENCHES or args.large)]
    outcomes: dict[str, Any] = {}
    for number, bench in enumerate(chosen, 1):
        say(f"[{number}/{len(chosen)}] {bench.name} (load average {stack.loadavg()})")
        outcomes[bench.name] = run(bench, quick=args.quick, report_dir=report_dir)
    reports = {name: outcome.get("report") for name, outcome in outcomes.items()}
    found = rows(reports)
    print(flush=True)
    print(table(found), flush=True)
    print(flush=True)
    for name, path in profiles(reports).items():
        say(f"profile, {name}: {path}")
    load_at_end = stack.loadavg()
    say(f"load average at the end {load_at_end} (at the start {load_at_start})")
    failed = [name for name, outcome in outcomes.items() if outcome["exit_code"] != 0 or not outcome.get("report")]
    combined = {
        "at": datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": {**stack.machine(load_at_start), "loadavg_at_end": load_at_end},
        "table": found,
        "profiles": profiles(reports),
        "failed": failed,
        "benchmarks": outcomes,
    }
    Path(args.report).write_text(json.dumps(combined, indent=2, default=str))
    say(f"report written to {args.report}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
