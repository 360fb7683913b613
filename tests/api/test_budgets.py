"""Budgets: per agent per UTC day, metered tool calls and cost units; a step over budget fails
permanently with code budget_exceeded; usage shows at GET /agents/me."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ordinaut_site.budgets import budget_charge
from ordinaut_site.errors import BudgetExceeded
from ordinaut_site.models import Agent, AgentUsage
from runs.models import Run, StepRun
from runs.services import run_create
from tests.support.pipelines import drive, echo_pipeline, make_task
from tests.support.processes import wait_for
from tests.support.servers import LoopbackServer, loopback_server


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        yield srv


def _http_steps(server: LoopbackServer, n: int) -> dict[str, Any]:
    return {
        "pipeline": [
            {"id": f"call{i}", "uses": "orchestrator.http", "with": {"url": server.url(f"/c{i}")}} for i in range(n)
        ]
    }


@pytest.mark.django_db
def test_the_step_over_budget_fails_permanently_and_the_tool_is_not_called(agent: Any, server: LoopbackServer) -> None:
    Agent.objects.filter(pk=agent.agent.pk).update(tool_calls_per_day=2)
    task = make_task(agent.agent, _http_steps(server, 3))
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    assert (steps["call0"].status, steps["call1"].status, steps["call2"].status) == ("succeeded", "succeeded", "failed")
    assert (steps["call2"].error or {}).get("code") == "budget_exceeded"
    assert steps["call2"].attempts == 1, "permanent: no retry"
    error = run.error or {}
    assert (run.status, error.get("code"), error.get("step_id")) == ("failed", "budget_exceeded", "call2")
    assert server.count("/c2") == 0, "the tool was not called"

    budget = agent.client.get("/agents/me").json()["budget"]
    assert budget["tool_calls"] == {"used": 2, "limit": 2}
    assert budget["rejected"] == 1


@pytest.mark.django_db
def test_cost_units_limit_and_free_builtins(agent: Any) -> None:
    Agent.objects.filter(pk=agent.agent.pk).update(cost_units_per_day=5)
    owner = Agent.objects.get(pk=agent.agent.pk)
    budget_charge(agent=owner, cost=3, tool="vendor.expensive")
    with pytest.raises(BudgetExceeded, match="daily budget"):
        budget_charge(agent=owner, cost=3, tool="vendor.expensive")
    budget_charge(agent=owner, cost=2, tool="vendor.expensive")
    usage = AgentUsage.objects.get(agent=owner)
    assert (usage.tool_calls, usage.cost_units, usage.rejected) == (2, 5, 1)

    task = make_task(owner, echo_pipeline(3))  # echo reaches nothing outside: not metered
    run = run_create(task=task, trigger="manual")
    drive(run.pk)
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert AgentUsage.objects.get(agent=owner).tool_calls == 2


@pytest.mark.django_db
def test_budgets_are_per_agent(make_agent: Any) -> None:
    spender, other = make_agent(), make_agent()
    Agent.objects.filter(pk__in=[spender.agent.pk, other.agent.pk]).update(tool_calls_per_day=1)
    budget_charge(agent=Agent.objects.get(pk=spender.agent.pk), cost=1, tool="x.y")
    with pytest.raises(BudgetExceeded):
        budget_charge(agent=Agent.objects.get(pk=spender.agent.pk), cost=1, tool="x.y")
    budget_charge(agent=Agent.objects.get(pk=other.agent.pk), cost=1, tool="x.y")
    assert other.client.get("/agents/me").json()["budget"]["tool_calls"]["used"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_budget_exhaustion_in_a_real_run_on_a_worker(agent: Any, server: LoopbackServer, worker: Any) -> None:
    Agent.objects.filter(pk=agent.agent.pk).update(tool_calls_per_day=1)
    body = {"title": "spender", "schedule_kind": "manual", "payload": _http_steps(server, 2)}
    task_id = agent.client.post("/tasks", body, format="json").json()["id"]
    run_id = agent.client.post(f"/tasks/{task_id}/run_now").json()["id"]

    run = wait_for(
        lambda: (r := agent.client.get(f"/runs/{run_id}").json())["status"] in ("succeeded", "failed") and r,
        message="the run to end",
    )

    assert run["status"] == "failed"
    assert run["error"]["code"] == "budget_exceeded"
    assert [s["status"] for s in run["steps"]] == ["succeeded", "failed"]
    assert agent.client.get("/agents/me").json()["budget"]["tool_calls"]["used"] == 1
