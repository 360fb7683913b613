"""MCP stats tools: task_stats, run_stats and list_topics answer what their REST twins answer."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.test_stats import EMPTY, _publish, at, expected_stats, known_runs
from tests.support.pipelines import echo_pipeline, make_task

pytestmark = pytest.mark.django_db


def test_task_stats_answers_what_get_tasks_id_stats_answers(tools: Any, agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(1))
    runs = known_runs(task)

    body = tools.ok("task_stats", task_id=str(task.pk))

    assert body == agent.client.get(f"/tasks/{task.pk}/stats").json()
    assert body["total"] == 7
    assert body["success_rate"] == 0.4
    assert body["last_failure"] == expected_stats(runs)["last_failure"]


def test_task_stats_of_another_agents_task_is_not_found(tools: Any, tools_as: Any, make_agent: Any) -> None:
    theirs = make_task(make_agent().agent, echo_pipeline(1))
    known_runs(theirs)

    assert tools.error("task_stats", task_id=str(theirs.pk))["code"] == "not_found"
    assert tools_as(admin=True).ok("task_stats", task_id=str(theirs.pk))["total"] == 7


def test_run_stats_with_filters_answers_what_get_runs_stats_answers(tools: Any, agent: Any, make_agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(1))
    known_runs(task)
    known_runs(make_task(make_agent().agent, echo_pipeline(1)))
    since, until = at(100), at(250)

    body = tools.ok("run_stats", since=since.isoformat(), until=until.isoformat(), task_id=str(task.pk))

    rest = agent.client.get("/runs/stats", {"since": since.isoformat(), "until": until.isoformat(), "task": task.pk})
    assert body == rest.json()
    assert body["total"] == 2
    assert tools.ok("run_stats")["total"] == 7, "another agent's runs are not counted"


def test_run_stats_refuses_since_after_until(tools: Any) -> None:
    error = tools.error("run_stats", since="2026-03-02T00:00:00Z", until="2026-03-01T00:00:00Z")

    assert error["code"] == "validation_error"
    assert "until" in error["fields"]


def test_run_stats_for_an_admin_counts_every_agent(tools: Any, tools_as: Any, agent: Any, make_agent: Any) -> None:
    known_runs(make_task(make_agent().agent, echo_pipeline(1)))

    assert tools.ok("run_stats") == EMPTY
    assert tools_as(admin=True).ok("run_stats")["total"] == 7


def test_list_topics_answers_what_get_events_topics_answers(tools: Any, agent: Any, make_agent: Any) -> None:
    for topic, seconds in [("mail.received", 0), ("build.done", 10), ("mail.received", 20)]:
        _publish(agent.agent, topic, seconds)
    _publish(make_agent().agent, "theirs.only", 30)

    body = tools.ok("list_topics")
    first = tools.ok("list_topics", limit=1)

    assert body["count"] == 2
    assert body["results"] == agent.client.get("/events/topics").json()["results"]
    assert body["results"][0] == {"topic": "mail.received", "count": 2, "last_published_at": "2026-03-01T12:00:20Z"}
    assert (first["count"], first["next_offset"], [r["topic"] for r in first["results"]]) == (2, 1, ["mail.received"])
