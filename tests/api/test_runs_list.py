"""GET /runs: the caller's runs, newest first, without steps; filters; pagination; scopes."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from runs.models import Run
from runs.services import run_create
from tests.support.pipelines import echo_pipeline, make_task, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def runs(agent: Any) -> list[Run]:
    first = make_task(agent.agent, echo_pipeline(1), title="first")
    second = make_task(agent.agent, echo_pipeline(1), title="second")
    made = [
        run_create(task=first, trigger="manual"),
        run_create(task=first, trigger="schedule", trigger_key="schedule:2026-01-01T00:00:00Z"),
        run_create(task=second, trigger="manual"),
    ]
    Run.objects.filter(pk=made[1].pk).update(status="failed")
    # Spread creation times so the order is unambiguous.
    for age, run in enumerate(reversed(made)):
        Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=age))
    return made


def _ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.json()
    return [run["id"] for run in response.json()["results"]]


def test_lists_own_runs_newest_first_without_steps(agent: Any, runs: list[Run]) -> None:
    response = agent.client.get("/runs")
    assert _ids(response) == [str(run.pk) for run in reversed(runs)]
    body = response.json()
    assert body["count"] == 3
    assert "steps" not in body["results"][0]
    assert body["results"][0]["task_title"] == "second"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", [1]),
        ("status=queued,failed", [2, 1, 0]),
        ("trigger=schedule", [1]),
        ("trigger=manual&status=queued", [2, 0]),
        ("status=&trigger=", [2, 1, 0]),
    ],
)
def test_filters(agent: Any, runs: list[Run], query: str, expected: list[int]) -> None:
    assert _ids(agent.client.get(f"/runs?{query}")) == [str(runs[i].pk) for i in expected]


def test_filter_by_task_and_time(agent: Any, runs: list[Run]) -> None:
    assert _ids(agent.client.get(f"/runs?task={runs[0].task_id}")) == [str(runs[1].pk), str(runs[0].pk)]
    middle = Run.objects.get(pk=runs[1].pk).created_at
    since = agent.client.get("/runs", {"since": middle.isoformat()})
    assert _ids(since) == [str(runs[2].pk), str(runs[1].pk)]
    until = agent.client.get("/runs", {"until": middle.isoformat()})
    assert _ids(until) == [str(runs[0].pk)]


def test_limit_and_offset(agent: Any, runs: list[Run]) -> None:
    page = agent.client.get("/runs?limit=2&offset=1").json()
    assert [run["id"] for run in page["results"]] == [str(runs[1].pk), str(runs[0].pk)]
    assert page["count"] == 3
    assert page["previous"] is not None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=bogus", "status"),
        ("trigger=cron", "trigger"),
        ("since=yesterday", "since"),
        ("task=not-a-uuid", "task"),
        ("since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z", "until"),
    ],
)
def test_bad_filters_are_400_naming_the_field(agent: Any, query: str, field: str) -> None:
    response = agent.client.get(f"/runs?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"
    assert field in response.json()["error"]["fields"]


def test_other_agents_runs_are_not_listed_but_admins_see_all(make_agent: Any, runs: list[Run]) -> None:
    assert _ids(make_agent().client.get("/runs")) == []
    assert len(_ids(make_agent(admin=True).client.get("/runs"))) >= 3


def test_needs_runs_read_scope(make_agent: Any) -> None:
    response = make_agent(scopes=["tasks:read"]).client.get("/runs")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_anonymous_is_401() -> None:
    response = APIClient().get("/runs")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_an_unknown_query_parameter_is_a_400_naming_it(agent: Any) -> None:
    response = agent.client.get("/runs?task_idd=1")

    assert response.status_code == 400
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert list(body["error"]["fields"]) == ["task_idd"]
    assert (
        "known: limit, offset, since, status, task, task_id, trigger, until" in body["error"]["fields"]["task_idd"][0]
    )


def test_task_id_is_the_same_filter_as_task(agent: Any) -> None:
    mine = run_in_process(agent.agent, echo_pipeline(1))
    run_in_process(agent.agent, echo_pipeline(1))

    by_alias = agent.client.get(f"/runs?task_id={mine.task_id}").json()
    by_name = agent.client.get(f"/runs?task={mine.task_id}").json()

    assert by_alias["count"] == by_name["count"] == 1
    assert agent.client.get(f"/runs?task={mine.task_id}&task_id={uuid.uuid4()}").status_code == 400
