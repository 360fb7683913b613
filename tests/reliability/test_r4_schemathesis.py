"""R4, long profile: schemathesis over /openapi.json, at least 1,000 generated requests with a valid token.

Run with `make reliability-r4` (EXAMPLES=N cases per operation and mode, default 50; QUICK=1 for
20, about 1,200 cases; R4_SEED=N replays a run). Prints a progress line per operation, the case count and the
result, and writes var/reliability-r4.json. Goal (docs/benchmarks.md): no 5xx, every 4xx in the error
shape, every response as the schema says. The checks are tests/support/fuzz.py's.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tests.support.api_matrix import MATRIX
from tests.support.fuzz import Fuzzer, Tally, format_failures, load_schema, no_rate_limits

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]
REPORT = BASE_DIR / "var" / "reliability-r4.json"
MIN_CASES = 1000


def test_r4_schemathesis_long_profile(make_agent: Any, settings: Any) -> None:
    examples = int(os.environ.get("R4_EXAMPLES") or 50)
    seed = int(os.environ.get("R4_SEED") or random.randrange(2**32))
    caller = make_agent(name="r4-admin", admin=True)
    owner = make_agent(name="r4-owner")
    tally = Tally()
    fuzzer = Fuzzer(schema=load_schema(), token=caller.token, owner=owner.agent, tally=tally)
    print(f"\nR4 schemathesis: {len(MATRIX)} operations, {examples} valid + {examples} invalid cases each, seed {seed}")

    with no_rate_limits(settings):
        for number, endpoint in enumerate(MATRIX, start=1):
            failures_before = len(tally.failures)
            fuzzer.run_operation(endpoint.method, endpoint.path, examples=examples, derandomize=False, seed=seed)
            label = str(endpoint)
            statuses = dict(sorted(tally.statuses[label].items()))
            found = len(tally.failures) - failures_before
            print(f"[{number:2}/{len(MATRIX)}] {label:40} {tally.cases[label]:5} cases {statuses} failing {found}")

    summary = {"seed": seed, "examples_per_mode": examples, **tally.summary()}
    summary["goal_met"] = not tally.failures and tally.total >= MIN_CASES
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(summary, indent=2, default=str))
    result = "PASS" if summary["goal_met"] else "FAIL"
    print(
        f"R4 {result}: {tally.total} cases in {tally.seconds:.0f} s, {len(tally.failures)} failing, "
        f"statuses {summary['statuses']}; report {REPORT}"
    )
    assert not tally.failures, format_failures(tally)
    assert tally.total >= MIN_CASES, f"only {tally.total} cases; R4 asks for at least {MIN_CASES}"
