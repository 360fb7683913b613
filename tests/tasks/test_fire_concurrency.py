"""Concurrent fire batches and beat's cursor writes take task rows in one global order: no deadlock.

Several processes fire the same occurrences of the same tasks at once (as two workers running two
fire batches do, or a batch and its retry), while another writes beat's cursors for those tasks,
each in a shuffled order. Every batch must go through first time (a deadlock would make it retry),
each occurrence must have exactly one run, and PostgreSQL's log must report no deadlock.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from runs.models import Run
from tasks.models import Task
from tests.support.processes import BASE_DIR, child_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

TASKS = 30
ROUNDS = 12
FIRERS = 4
POSTGRES_LOGS = Path("/var/log/postgresql")

_FIRER = """
import json, random, sys
from datetime import datetime
import django
django.setup()
from tasks.services import task_fire_batch
ids, instants, seed = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
again = 0
for at in instants:
    batch = [(task_id, datetime.fromisoformat(at)) for task_id in ids]
    rng.shuffle(batch)
    half = rng.randint(1, len(batch) - 1)
    for chunk in (batch[:half], batch[half:]):
        again += len(task_fire_batch(occurrences=chunk))
print(json.dumps({"again": again}))
"""

_CURSORS = """
import json, random, sys
from datetime import datetime
from types import SimpleNamespace
import django
django.setup()
from tasks.models import Task
from tasks.scheduler import cursors_save
ids, instants, seed = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
tasks = {str(t.pk): t for t in Task.objects.filter(pk__in=ids)}
for at in instants * 3:
    entries = [
        SimpleNamespace(task_id=key, cursor=datetime.fromisoformat(at), next_run_at=datetime.fromisoformat(at),
                        schedule_version=t.schedule_version, pt_id=t.periodic_task_id)
        for key, t in tasks.items()
    ]
    rng.shuffle(entries)
    cursors_save(entries)
print(json.dumps({"again": 0}))
"""


def _deadlocks_in_log(database: str, since_bytes: dict[Path, int]) -> list[str]:
    found = []
    for path, start in since_bytes.items():
        with path.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        found += [line for line in text.splitlines() if "deadlock detected" in line and f"@{database} " in line]
    return found


def _log_sizes() -> dict[Path, int]:
    if not POSTGRES_LOGS.is_dir():
        return {}
    return {path: path.stat().st_size for path in POSTGRES_LOGS.glob("postgresql-*.log") if path.is_file()}


def test_overlapping_fire_batches_and_cursor_writes_never_deadlock(make_task: Any) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row-lock order is PostgreSQL's concern; SQLite serialises writers")
    tasks = [make_task("cron", "* * * * *", title=f"t{n}") for n in range(TASKS)]
    ids = json.dumps([str(task.pk) for task in tasks])
    # Two days ago: outside the catch-up window, so each occurrence is recorded as a missed run
    # (the same locks and inserts as a fire, without sending chains to a broker).
    base = (timezone.now() - timedelta(days=2)).replace(second=0, microsecond=0)
    instants = json.dumps([(base + timedelta(minutes=n)).isoformat() for n in range(ROUNDS)])
    logs_before = _log_sizes()

    scripts = [_FIRER] * FIRERS + [_CURSORS]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), ids, instants, str(seed)],
            env=child_env(),
            cwd=BASE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed, script in enumerate(scripts)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        results.append(json.loads(out.decode().strip().splitlines()[-1]))

    assert [result["again"] for result in results] == [0] * len(scripts), "a batch had to be retried"
    assert Run.objects.filter(task__in=tasks).count() == TASKS * ROUNDS, "exactly one run per occurrence"
    assert set(Run.objects.filter(task__in=tasks).values_list("skip_reason", flat=True)) == {"missed"}
    assert Task.objects.filter(pk__in=[t.pk for t in tasks]).count() == TASKS
    if logs_before:
        assert _deadlocks_in_log(connection.settings_dict["NAME"], logs_before) == []
