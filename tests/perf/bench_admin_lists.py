"""The admin's lists at 100,000 runs: each list page's query count and time (median of several
views), unfiltered, filtered and searched, and a run page and a task page, on a database of its own
(DATABASE_URL, default postgres://postgres@127.0.0.1:5432/ordinaut_bench_admin; made, migrated and
dropped here unless --keep). Rows come from tests/admin/rows.py: 100,000 runs over 1,000 tasks, each
run with a foreach step of one item, an approval, an emitted event and an audit entry.

Run:  .venv/bin/python tests/perf/bench_admin_lists.py [--runs 100000] [--views 5] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordinaut_bench_admin")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/8")
os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")

import django  # noqa: E402

django.setup()

import psycopg  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

PAGES = [
    "/admin/runs/run/",
    "/admin/runs/run/?status__exact=failed",
    "/admin/runs/run/?q=Task+000123",
    "/admin/runs/approval/",
    "/admin/runs/approval/?status__exact=pending",
    "/admin/runs/stepitem/",
    "/admin/tasks/task/",
    "/admin/tasks/event/",
    "/admin/tasks/event/?origin=step",
    "/admin/ordinaut/auditlog/",
]


def _server_url() -> str:
    return os.environ["DATABASE_URL"].rsplit("/", 1)[0] + "/postgres"


def _database(action: str) -> None:
    name = settings.DATABASES["default"]["NAME"]
    with psycopg.connect(_server_url(), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if action == "create" and not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
        if action == "drop" and exists:
            conn.execute(f'DROP DATABASE "{name}"')


def _view(client: Client, path: str, views: int) -> dict[str, Any]:
    client.get(path)  # warm: templates, caches
    times, queries = [], 0
    for _ in range(views):
        with CaptureQueriesContext(connection) as captured:
            started = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - started)
        assert response.status_code == 200, (path, response.status_code)
        queries = len(captured.captured_queries)
        slowest = max(captured.captured_queries, key=lambda query: float(query["time"]))
    return {
        "path": path,
        "queries": queries,
        "median_ms": round(statistics.median(times) * 1000, 1),
        "slowest_query_ms": round(float(slowest["time"]) * 1000, 1),
        "slowest_query": slowest["sql"][:160],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--views", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the database (and reuse its rows next time)")
    args = parser.parse_args()

    from runs.models import Run
    from tasks.models import Task
    from tests.admin.rows import agent_for_rows, build_rows

    _database("create")
    try:
        call_command("migrate", verbosity=0)
        if Run.objects.count() < args.runs:
            started = time.perf_counter()
            build_rows(agent_for_rows(), args.runs - Run.objects.count(), tasks=args.tasks)
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")  # as autovacuum would, after a bulk load
            print(f"built {args.runs} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        user = get_user_model().objects.filter(username="bench").first()
        user = user or get_user_model().objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(user)
        run = Run.objects.order_by("-created_at").first()
        task = Task.objects.order_by("-created_at").first()
        assert run is not None
        assert task is not None
        pages = [*PAGES, f"/admin/runs/run/{run.pk}/change/", f"/admin/tasks/task/{task.pk}/change/"]
        report = {"runs": Run.objects.count(), "pages": [_view(client, path, args.views) for path in pages]}
        print(json.dumps(report, indent=2))
    finally:
        connection.close()
        if not args.keep:
            _database("drop")


if __name__ == "__main__":
    main()
