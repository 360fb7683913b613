"""The benchmarks' commands (tests/perf, not collected by default) start and parse their arguments, and
the pieces that turn wrk's, py-spy's and the benchmarks' output into figures read real output right.
The benchmarks themselves run by `make bench` (docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.perf import bench_all, bench_api, bench_memory, stack

BASE_DIR = Path(__file__).resolve().parents[1]

WRK_OUTPUT = """Running 8s test @ http://127.0.0.1:8765/tasks
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   648.67ms  118.23ms 927.72ms   72.63%
    Req/Sec    15.33     10.56    50.00     79.07%
  Latency Distribution
     50%  652.86ms
     75%  684.20ms
     90%  818.07ms
     99%    1.05s
  95 requests in 8.01s, 118.75KB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:     11.85
Transfer/sec:     14.82KB
"""


@pytest.mark.parametrize("script", ["bench_api.py", "bench_memory.py", "bench_all.py"])
def test_each_benchmark_command_answers_help_without_a_database(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BASE_DIR / "tests" / "perf" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage:")
    assert "--quick" in done.stdout


def test_the_quick_variants_parse() -> None:
    assert bench_api.build_parser().parse_args(["--quick", "--only", "b4"]).only == "b4"
    assert bench_memory.build_parser().parse_args(["--quick", "--profile"]).profile
    assert bench_all.build_parser().parse_args(["--quick", "--only", "B4/B5", "B6"]).only == ["B4/B5", "B6"]


def test_wrk_output_becomes_figures() -> None:
    result = stack.parse_wrk(WRK_OUTPUT)

    assert (result.requests, result.duration_s, result.per_s) == (95, 8.01, 11.85)
    assert result.latency_ms == {"p50": 652.86, "p75": 684.2, "p90": 818.07, "p99": 1050.0}
    assert result.non_2xx == 4
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.errors == 7


def test_a_wrk_script_sets_the_body_a_unique_header_and_a_pace() -> None:
    script = stack.lua_script(
        method="POST",
        headers={"Content-Type": "application/json"},
        body='{"title": "x"}',
        unique_header="Idempotency-Key",
        delay_ms=12.5,
    )

    assert 'wrk.method = "POST"' in script
    assert 'wrk.body = "{\\"title\\": \\"x\\"}"' in script
    assert 'wrk.headers["Idempotency-Key"] = prefix' in script
    assert "delay = function() return 12.500 end" in script


def test_a_collapsed_profile_is_summarised_without_its_idle_samples(tmp_path: Path) -> None:
    profile = tmp_path / "profile.txt"
    profile.write_text(
        "main (app.py:1);view (api.py:10);query (db.py:5) 6\n"
        "main (app.py:1);view (api.py:12);render (api.py:20) 2\n"
        "main (app.py:1);select (selectors.py:469) 8\n"
    )

    summary = stack.profile_summary(profile, focus=r"api\.py|db\.py")

    assert (summary["busy_samples"], summary["idle_samples"]) == (8, 8)
    assert summary["inclusive"][0] == {"function": "view (api.py)", "share": 1.0}
    assert {"function": "query (db.py)", "share": 0.75} in summary["inclusive"]
    assert summary["self"][0] == {"function": "query (db.py)", "share": 0.75}


def test_the_table_judges_each_figure_by_the_documented_goals() -> None:
    reports: dict[str, Any] = {
        "B1/B2": {
            "b1": {
                "ratio": 0.72,
                "ratio_to_floor": 0.5,
                "baseline_bare_chain": {"per_s_median": 100.0},
                "ordinaut_pipeline": {"per_s_median": 72.0},
            },
            "b2": {"baseline_per_hop_ms_p50": 4.0, "per_step_overhead_ms": {"p50": 3.0, "p99": 9.0}},
        },
        "B3": {
            "tasks": 1000,
            "due": 100,
            "baseline": {"lateness_p99_s": 30.0, "duplicates": 5},
            "ordinaut": {
                "fired": 100,
                "missed": 0,
                "duplicates": 0,
                "lateness_p99_s": 0.2,
                "start_lateness_p99_s": 0.9,
                "start_lateness_max_s": 1.5,
            },
        },
        "B4/B5": {
            "b4": {"ratio": 0.3, "baseline_per_s": 100.0, "ordinaut_per_s": 30.0, "goal_met": False},
            "b5": {"ratio": 0.95, "latency": {"ms": {"p99": 20.0}}, "goal_met": True},
        },
        "B6": None,
    }

    found = {row["id"]: row["met"] for row in bench_all.rows(reports)}
    table = bench_all.table(bench_all.rows(reports))

    assert found == {"B1": True, "B2": False, "B3": True, "B4": False, "B5": True}
    assert table.splitlines()[0].split(" | ")[0].strip() == "id"
    assert "0.72x" in table
    assert "NO" in table


def test_a_second_run_of_a_benchmark_refuses_while_the_first_holds_its_database() -> None:
    name = f"cli-test-{Path(__file__).stat().st_ino}"
    code = (
        f"import sys; sys.path.insert(0, {str(BASE_DIR)!r}); "
        f"from tests.perf import stack; stack.one_at_a_time({name!r})"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code + "; print('held', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        assert first.stdout.readline().strip() == "held"
        second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "another run of this benchmark is going on" in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.communicate("\n", timeout=60)
    after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert after.returncode == 0, after.stderr
    (BASE_DIR / "var" / f"bench-{name}.lock").unlink(missing_ok=True)
