"""GET /tasks/{id}/stats, GET /runs/stats and GET /events/topics: values on known runs and events,
isolation, admins, bad parameters, and a query count that does not grow with the number of runs."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from ordinaut_site.audit import SYSTEM
from runs.models import Run
from runs.selectors import run_stats, run_stats_of
from tasks.events import event_publish
from tasks.models import Event, Task
from tests.support.api_matrix import assert_error
from tests.support.pipelines import echo_pipeline, make_task

pytestmark = pytest.mark.django_db

T0 = datetime.fromisoformat("2026-03-01T12:00:00+00:00")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def maybe_at(seconds: float | None) -> datetime | None:
    return None if seconds is None else at(seconds)


def add_run(
    task: Task,
    status: str,
    trigger: str = "manual",
    *,
    created: float = 0,
    scheduled: float | None = None,
    started: float | None = None,
    finished: float | None = None,
    error: dict[str, Any] | None = None,
) -> Run:
    return Run.objects.create(
        task=task,
        trigger=trigger,
        trigger_key=f"test:{uuid.uuid4()}",
        status=status,
        created_at=at(created),
        scheduled_for=maybe_at(scheduled),
        started_at=maybe_at(started),
        finished_at=maybe_at(finished),
        error=error,
    )


def known_runs(task: Task) -> dict[str, Run]:
    """Durations 10, 20, 30, 40, 5 s; lateness 1 and 3 s; 2 succeeded of 5 finished; last failure r4."""
    return {
        "r1": add_run(task, "succeeded", "schedule", created=0, scheduled=0, started=1, finished=11),
        "r2": add_run(task, "succeeded", "schedule", created=60, scheduled=60, started=63, finished=83),
        "r3": add_run(task, "failed", created=120, started=120, finished=150, error={"code": "tool_error"}),
        "r4": add_run(task, "failed", "event", created=200, started=200, finished=240, error={"code": "timeout"}),
        "r5": add_run(task, "skipped", "schedule", created=300, scheduled=300, finished=300),
        "r6": add_run(task, "queued", created=350),
        "r7": add_run(task, "canceled", "replay", created=400, started=400, finished=405),
    }


def expected_stats(runs: dict[str, Run]) -> dict[str, Any]:
    return {
        "total": 7,
        "by_status": {
            "scheduled": 0,
            "queued": 1,
            "running": 0,
            "waiting_approval": 0,
            "succeeded": 2,
            "failed": 2,
            "canceled": 1,
            "skipped": 1,
        },
        "by_trigger": {"schedule": 3, "event": 1, "manual": 2, "replay": 1},
        "success_rate": 0.4,
        # sorted 5, 10, 20, 30, 40: p50 at position 2, p95 at 3.8 (30 + 0.8 * 10)
        "duration_seconds": {"p50": 20.0, "p95": 38.0},
        # 1 and 3: p50 at 0.5, p95 at 0.95 (1 + 0.95 * 2)
        "lateness_seconds": {"p50": 2.0, "p95": 2.9},
        "last_failure": {"run": str(runs["r4"].pk), "finished_at": "2026-03-01T12:04:00Z", "code": "timeout"},
    }


EMPTY = {
    "total": 0,
    "by_status": {status: 0 for status in Run.Status.values},
    "by_trigger": {trigger: 0 for trigger in Run.Trigger.values},
    "success_rate": None,
    "duration_seconds": {"p50": None, "p95": None},
    "lateness_seconds": {"p50": None, "p95": None},
    "last_failure": None,
}


@pytest.fixture
def task(agent: Any) -> Task:
    return make_task(agent.agent, echo_pipeline(1), title="measured")


def _ok(response: Any) -> Any:
    assert response.status_code == 200, response.content[:300]
    return response.json()


def _approx(stats: dict[str, Any]) -> dict[str, Any]:
    """Floats compared to the microsecond (interval arithmetic rounds there)."""
    return {
        **stats,
        "duration_seconds": {k: pytest.approx(v, abs=1e-6) for k, v in stats["duration_seconds"].items()},
        "lateness_seconds": {k: pytest.approx(v, abs=1e-6) for k, v in stats["lateness_seconds"].items()},
    }


# --- GET /tasks/{id}/stats ------------------------------------------------------------------------


def test_task_stats_on_known_runs(agent: Any, task: Task) -> None:
    runs = known_runs(task)
    add_run(make_task(agent.agent, echo_pipeline(1), title="other"), "failed", finished=999)

    assert _ok(agent.client.get(f"/tasks/{task.pk}/stats")) == _approx(expected_stats(runs))


def test_task_stats_of_a_task_without_runs(agent: Any, task: Task) -> None:
    assert _ok(agent.client.get(f"/tasks/{task.pk}/stats")) == EMPTY


def test_another_agents_task_is_404_and_admins_see_it(agent: Any, make_agent: Any) -> None:
    theirs = make_task(make_agent().agent, echo_pipeline(1))
    runs = known_runs(theirs)

    assert_error(agent.client.get(f"/tasks/{theirs.pk}/stats"), 404, "not_found")
    assert_error(agent.client.get(f"/tasks/{uuid.uuid4()}/stats"), 404, "not_found")
    admin = make_agent(admin=True)
    assert _ok(admin.client.get(f"/tasks/{theirs.pk}/stats")) == _approx(expected_stats(runs))


def test_task_stats_needs_tasks_read(make_agent: Any, task: Task) -> None:
    runs_only = make_agent(scopes=["runs:read"])
    assert_error(runs_only.client.get(f"/tasks/{task.pk}/stats"), 403, "permission_denied")


# --- GET /runs/stats ------------------------------------------------------------------------------


def test_run_stats_count_only_the_agents_runs(agent: Any, task: Task, make_agent: Any) -> None:
    runs = known_runs(task)
    other = make_agent()
    known_runs(make_task(other.agent, echo_pipeline(1)))

    assert _ok(agent.client.get("/runs/stats")) == _approx(expected_stats(runs))
    assert _ok(agent.client.get(f"/runs/stats?task={task.pk}")) == _approx(expected_stats(runs))
    assert _ok(other.client.get(f"/runs/stats?task={task.pk}")) == EMPTY, "another agent's task counts nothing"


def test_an_admin_counts_every_agents_runs(agent: Any, task: Task, make_agent: Any) -> None:
    known_runs(task)
    known_runs(make_task(make_agent().agent, echo_pipeline(1)))
    admin = make_agent(admin=True)

    body = _ok(admin.client.get("/runs/stats"))

    assert body["total"] == 14
    assert body["by_status"]["failed"] == 4
    assert body["success_rate"] == 0.4
    # each duration twice: 5, 5, 10, 10, 20, 20, 30, 30, 40, 40
    assert body["duration_seconds"] == {"p50": 20.0, "p95": 40.0}


def test_since_and_until_bound_the_creation_time(agent: Any, task: Task) -> None:
    runs = known_runs(task)

    body = _ok(agent.client.get("/runs/stats", {"since": at(100).isoformat(), "until": at(250).isoformat()}))

    assert body["total"] == 2
    assert body["by_status"]["failed"] == 2
    assert body["success_rate"] == 0.0
    assert body["duration_seconds"] == {"p50": 35.0, "p95": pytest.approx(39.5)}
    assert body["lateness_seconds"] == {"p50": None, "p95": None}
    assert body["last_failure"]["run"] == str(runs["r4"].pk)
    assert _ok(agent.client.get("/runs/stats", {"since": at(400).isoformat()}))["total"] == 1
    assert _ok(agent.client.get("/runs/stats", {"until": at(0).isoformat()}))["total"] == 0
    assert _ok(agent.client.get("/runs/stats?since=&until=&task="))["total"] == 7, "empty values are no filter"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"task": "not-a-uuid"}, "task"),
        ({"since": "2026-03-02T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "until"),
        ({"since": "2026-03-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}, "until"),
    ],
)
def test_bad_parameters_are_validation_errors(agent: Any, query: dict[str, str], field: str) -> None:
    response = agent.client.get("/runs/stats", query)

    assert_error(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"]


def test_run_stats_needs_runs_read(make_agent: Any) -> None:
    tasks_only = make_agent(scopes=["tasks:read"])
    assert_error(tasks_only.client.get("/runs/stats"), 403, "permission_denied")


def test_a_failure_without_an_error_code_has_a_null_code(agent: Any, task: Task) -> None:
    failed = add_run(task, "failed", started=0, finished=1, error=None)

    assert _ok(agent.client.get("/runs/stats"))["last_failure"] == {
        "run": str(failed.pk),
        "finished_at": "2026-03-01T12:00:01Z",
        "code": None,
    }


# --- In the database, in a fixed number of queries ------------------------------------------------


def _many_runs(task: Task, count: int) -> None:
    statuses = ["succeeded", "failed", "canceled", "skipped", "queued"]
    Run.objects.bulk_create(
        Run(
            task=task,
            trigger="schedule",
            trigger_key=f"bulk:{i}",
            status=statuses[i % len(statuses)],
            created_at=at(i),
            scheduled_for=at(i),
            started_at=at(i + (i % 7) / 10),
            finished_at=at(i + (i % 7) / 10 + (i % 13)),
            error={"code": "tool_error"} if statuses[i % len(statuses)] == "failed" else None,
        )
        for i in range(count)
    )


def _queries(function: Any) -> int:
    with CaptureQueriesContext(connection) as captured:
        function()
    return len(captured.captured_queries)


@pytest.mark.parametrize("in_database", [True, False], ids=["percentile_cont", "order_by_offset"])
def test_the_query_count_does_not_grow_with_the_runs(agent: Any, in_database: bool) -> None:
    small, large = (make_task(agent.agent, echo_pipeline(1), title=title) for title in ("small", "large"))
    _many_runs(small, 10)
    _many_runs(large, 200)

    counts = [
        _queries(lambda t=t: run_stats_of(Run.objects.filter(task=t), in_database_percentiles=in_database))
        for t in (small, large)
    ]

    # One aggregate and the last failure; the ORDER BY/OFFSET path adds one query per percentile.
    assert counts == ([2, 2] if in_database else [6, 6])


def test_the_api_query_count_does_not_grow_with_the_runs(agent: Any) -> None:
    small, large = (make_task(agent.agent, echo_pipeline(1), title=title) for title in ("small", "large"))
    _many_runs(small, 10)
    _many_runs(large, 200)
    agent.client.get("/agents/me")  # the token's last_used_at is written once, not per request

    for path in ("/tasks/{id}/stats", "/runs/stats?task={id}"):
        urls = [path.format(id=t.pk) for t in (small, large)]
        counts = [_queries(lambda url=url: _ok(agent.client.get(url))) for url in urls]
        assert counts[0] == counts[1], (path, counts)


def test_both_percentile_paths_agree(agent: Any, task: Task) -> None:
    _many_runs(task, 200)
    runs = Run.objects.filter(task=task)

    assert run_stats_of(runs, in_database_percentiles=False) == _approx(
        run_stats_of(runs, in_database_percentiles=True)
    )


def test_the_selector_without_an_agent_counts_every_run(agent: Any, task: Task, make_agent: Any) -> None:
    known_runs(task)
    known_runs(make_task(make_agent().agent, echo_pipeline(1)))

    assert run_stats(agent=None)["total"] == 14
    assert run_stats(agent=agent.agent)["total"] == 7


# --- GET /events/topics ---------------------------------------------------------------------------


def _publish(agent: Any, topic: str, seconds: float) -> Event:
    event = event_publish(publisher=agent, actor=SYSTEM, topic=topic, payload={})
    Event.objects.filter(pk=event.pk).update(published_at=at(seconds))
    return event


def test_topics_with_counts_most_recent_first(agent: Any, make_agent: Any) -> None:
    for topic, seconds in [("mail.received", 0), ("build.done", 10), ("mail.received", 20), ("alert", 5)]:
        _publish(agent.agent, topic, seconds)
    other = make_agent()
    _publish(other.agent, "theirs.only", 30)

    body = _ok(agent.client.get("/events/topics"))

    assert body["count"] == 3
    assert body["results"] == [
        {"topic": "mail.received", "count": 2, "last_published_at": "2026-03-01T12:00:20Z"},
        {"topic": "build.done", "count": 1, "last_published_at": "2026-03-01T12:00:10Z"},
        {"topic": "alert", "count": 1, "last_published_at": "2026-03-01T12:00:05Z"},
    ]
    assert [row["topic"] for row in _ok(other.client.get("/events/topics"))["results"]] == ["theirs.only"]
    admin = make_agent(admin=True)
    assert [row["topic"] for row in _ok(admin.client.get("/events/topics"))["results"]] == [
        "theirs.only",
        "mail.received",
        "build.done",
        "alert",
    ]


def test_topics_are_paginated(agent: Any) -> None:
    for index in range(3):
        _publish(agent.agent, f"topic.{index}", index)

    body = _ok(agent.client.get("/events/topics?limit=2&offset=1"))

    assert body["count"] == 3
    assert [row["topic"] for row in body["results"]] == ["topic.1", "topic.0"]
    assert body["previous"] is not None
    assert body["next"] is None
    assert_error(agent.client.get("/events/topics?limit=0"), 400, "validation_error")


def test_topics_need_events_publish(make_agent: Any) -> None:
    reader = make_agent(scopes=["tasks:read", "runs:read"])
    assert_error(reader.client.get("/events/topics"), 403, "permission_denied")


# --- The admin's task page --------------------------------------------------------------------------


def test_the_admin_task_page_shows_the_stats(task: Task) -> None:
    runs = known_runs(task)
    operator = get_user_model().objects.create_superuser("operator", "op@example.com", "pw-not-used")
    client = Client()
    client.force_login(operator)

    page = client.get(f"/admin/tasks/task/{task.pk}/change/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "Run statistics" in html
    assert "7: 1 queued, 2 succeeded, 2 failed, 1 canceled, 1 skipped" in html
    assert "40.0%" in html
    assert "20.000 s / 38.000 s" in html
    assert str(runs["r4"].pk) in html
    assert "(timeout)" in html
    assert client.get("/admin/tasks/task/add/").status_code == 200
