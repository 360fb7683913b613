"""Admin lists and record pages make as many queries for 200 rows as for 10 (no query per row),
and the record lists do not count their whole table on each page."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from runs.models import Run, StepItem, StepRun
from runs.services import run_create
from tasks.models import Task
from tests.admin.rows import build_rows
from tests.support.pipelines import drive, make_task

pytestmark = pytest.mark.django_db

LISTS = [
    "/admin/runs/run/",
    "/admin/runs/approval/",
    "/admin/runs/stepitem/",
    "/admin/tasks/task/",
    "/admin/tasks/event/",
    "/admin/ordinaut/auditlog/",
]
# The record lists, which do not count the whole table on each page.
RECORD_LISTS = [path for path in LISTS if path != "/admin/tasks/task/"]


def _queries(client: Client, path: str) -> list[str]:
    """The queries of a page view (after a first view, which also fills per-process caches)."""
    client.get(path)
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, path
    return [query["sql"] for query in captured.captured_queries]


def _rows_shown(client: Client, path: str) -> int:
    response = client.get(path)
    assert response.status_code == 200
    return len(response.context["cl"].result_list)


@pytest.mark.parametrize("path", LISTS)
def test_a_list_makes_the_same_queries_for_200_rows_as_for_10(admin_client: Client, agent: Any, path: str) -> None:
    build_rows(agent.agent, 10)
    few = _queries(admin_client, path)
    assert _rows_shown(admin_client, path) >= 10

    build_rows(agent.agent, 190)
    many = _queries(admin_client, path)

    assert _rows_shown(admin_client, path) == 100, "a full page"
    assert len(many) == len(few), f"{path}: {len(few)} queries for 10 rows, {len(many)} for 200:\n" + "\n".join(many)


@pytest.mark.parametrize("path", RECORD_LISTS)
def test_a_filtered_record_list_counts_only_what_it_shows(admin_client: Client, agent: Any, path: str) -> None:
    build_rows(agent.agent, 20)

    counts = [sql for sql in _queries(admin_client, path + "?q=zzz") if "COUNT(" in sql.upper()]

    assert len(counts) == 1, counts  # the paginator's, of the filtered rows; not the whole table's too


def test_the_run_page_makes_the_same_queries_for_many_steps_and_items(admin_client: Client, agent: Any) -> None:
    def foreach_run(steps: int, items: int) -> Run:
        pipeline = [
            {"id": f"s{n}", "uses": "orchestrator.echo", "foreach": list(range(items)), "with": {"v": "${item}"}}
            for n in range(steps)
        ]
        run = run_create(task=make_task(agent.agent, {"pipeline": pipeline}), trigger="manual")
        drive(run.pk)
        return run

    small, large = foreach_run(1, 2), foreach_run(6, 30)
    assert StepItem.objects.filter(step__run=large).count() == 180

    few = _queries(admin_client, f"/admin/runs/run/{small.pk}/change/")
    many = _queries(admin_client, f"/admin/runs/run/{large.pk}/change/")

    assert len(many) == len(few), "\n".join(many)
    assert StepRun.objects.filter(run=large).count() == 6


def test_the_task_page_makes_the_same_queries_for_3_runs_as_for_30(admin_client: Client, agent: Any) -> None:
    build_rows(agent.agent, 30, tasks=2)
    few_runs, many_runs = sorted(Task.objects.all(), key=lambda task: task.runs.count())
    Run.objects.filter(pk__in=list(few_runs.runs.values_list("pk", flat=True)[3:])).delete()
    assert (few_runs.runs.count(), many_runs.runs.count()) == (3, 15)

    few = _queries(admin_client, f"/admin/tasks/task/{few_runs.pk}/change/")
    many = _queries(admin_client, f"/admin/tasks/task/{many_runs.pk}/change/")

    assert len(many) == len(few), "\n".join(many)
