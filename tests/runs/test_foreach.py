"""foreach steps driven in-process (no broker): item records, order, failures, retries, budgets,
limits, cancel, replay and recovery of lost items."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.test import override_settings
from django.utils import timezone

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import Agent
from runs.engine import Next
from runs.models import Run, StepItem, StepRun
from runs.services import run_cancel, run_create, run_replay
from tests.support.pipelines import drive, make_task
from tests.support.servers import LoopbackServer, Reply, loopback_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def server() -> Any:
    with loopback_server() as srv:
        yield srv


def _run(owner: Any, payload: dict[str, Any], **fields: Any) -> Run:
    run = run_create(task=make_task(owner, payload, **fields), trigger="manual")
    drive(run.pk)
    return Run.objects.get(pk=run.pk)


def _items(run: Run, step_id: str) -> list[StepItem]:
    return list(StepItem.objects.filter(step__run=run, step__step_id=step_id).order_by("index"))


def _step(run: Run, step_id: str) -> StepRun:
    return StepRun.objects.get(run=run, step_id=step_id)


def test_each_item_is_a_recorded_call_and_the_output_keeps_item_order(agent: Any) -> None:
    payload = {
        "params": {"emails": ["a@x", "b@x", "c@x"]},
        "pipeline": [
            {"id": "find", "uses": "orchestrator.echo", "with": {"emails": "${params.emails}"}},
            {
                "id": "drafts",
                "uses": "orchestrator.echo",
                "foreach": "${steps.find.emails}",
                "with": {"email": "${item}", "n": "${item_index}", "text": "to ${item}"},
                "max_parallel": 2,
            },
            {"id": "count", "uses": "orchestrator.echo", "with": {"sent": "${length(steps.drafts)}"}},
        ],
    }
    run = _run(agent.agent, payload)

    assert run.status == "succeeded"
    drafts = _step(run, "drafts")
    assert drafts.status == "succeeded"
    assert drafts.output == [
        {"email": "a@x", "n": 0, "text": "to a@x"},
        {"email": "b@x", "n": 1, "text": "to b@x"},
        {"email": "c@x", "n": 2, "text": "to c@x"},
    ]
    assert drafts.input == {"foreach": 3, "max_parallel": 2}
    items = _items(run, "drafts")
    assert [(i.index, i.status, i.attempts) for i in items] == [
        (0, "succeeded", 1),
        (1, "succeeded", 1),
        (2, "succeeded", 1),
    ]
    assert items[1].input == {"email": "b@x", "n": 1, "text": "to b@x"}
    assert items[1].output == items[1].input
    assert all(i.started_at and i.finished_at and i.duration_ms is not None for i in items)
    assert [h["outcome"] for h in items[0].attempt_history] == ["succeeded"]
    assert run.result == {"sent": 3}, "later steps see the list of item outputs"


def test_a_literal_list_with_templates_and_an_empty_list(agent: Any) -> None:
    payload = {
        "params": {"city": "Chisinau", "none": []},
        "pipeline": [
            {"id": "lit", "uses": "orchestrator.echo", "foreach": ["${params.city}", 2], "with": {"v": "${item}"}},
            {"id": "empty", "uses": "orchestrator.echo", "foreach": "${params.none}", "with": {"v": "${item}"}},
            {"id": "after", "uses": "orchestrator.echo", "with": {"empty": "${steps.empty}"}},
        ],
    }
    run = _run(agent.agent, payload)

    assert run.status == "succeeded"
    assert _step(run, "lit").output == [{"v": "Chisinau"}, {"v": 2}]
    assert _step(run, "empty").output == []
    assert _items(run, "empty") == []
    assert run.result == {"empty": []}


def test_a_failed_item_fails_the_step_and_the_items_not_done_are_skipped(agent: Any, server: LoopbackServer) -> None:
    server.script("/1", Reply(404, {"error": "nope"}))
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": [0, 1, 2, 3],
                "with": {"url": server.url("/") + "${item}"},
            },
            {"id": "never", "uses": "orchestrator.echo"},
        ]
    }
    run = _run(agent.agent, payload)

    assert run.status == "failed"
    error = run.error or {}
    assert (error.get("code"), error.get("step_id")) == ("http_error", "fetch")
    assert error.get("message", "").startswith("item 1: ")
    step = _step(run, "fetch")
    assert (step.status, (step.error or {}).get("item")) == ("failed", 1)
    items = _items(run, "fetch")
    assert [i.status for i in items] == ["succeeded", "failed", "skipped", "skipped"]
    assert {i.skip_reason for i in items[2:]} == {"step_failed"}
    assert server.count("/2") == server.count("/3") == 0
    assert _step(run, "never").status == "pending"


def test_on_error_continue_leaves_the_error_in_the_items_slot(agent: Any, server: LoopbackServer) -> None:
    server.script("/1", Reply(404, {"error": "nope"}))
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": [0, 1, 2],
                "with": {"url": server.url("/") + "${item}"},
                "on_error": "continue",
            },
            {"id": "after", "uses": "orchestrator.echo", "with": {"codes": "${steps.fetch[*].error.code}"}},
        ]
    }
    run = _run(agent.agent, payload)

    assert run.status == "succeeded"
    output = _step(run, "fetch").output or []
    assert [slot.get("status") for slot in (output[0], output[2])] == [200, 200]
    assert output[1]["error"]["code"] == "http_error"
    assert run.result == {"codes": ["http_error"]}


def test_an_item_is_retried_on_its_own_by_the_steps_policy(agent: Any, server: LoopbackServer) -> None:
    server.script("/1", Reply(503), Reply(200, {"ok": True}))
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": [0, 1, 2],
                "with": {"url": server.url("/") + "${item}"},
                "retry": {"max_attempts": 3, "backoff_seconds": 1},
            }
        ]
    }
    run = _run(agent.agent, payload)

    assert run.status == "succeeded"
    items = _items(run, "fetch")
    assert [i.attempts for i in items] == [1, 2, 1]
    assert [h["outcome"] for h in items[1].attempt_history] == ["retry", "succeeded"]
    assert items[1].attempt_history[0]["error"]["status"] == 503
    assert [server.count(f"/{n}") for n in range(3)] == [1, 2, 1]


def test_an_item_whose_input_breaks_the_tools_schema_fails_without_a_call(agent: Any) -> None:
    payload = {
        "pipeline": [
            {
                "id": "send",
                "uses": "telegram-mcp.send_message",
                "foreach": [1, "x", 3],
                "with": {"chat_id": "${item}", "text": "hi"},
                "on_error": "continue",
            }
        ]
    }
    run = _run(agent.agent, payload)

    assert run.status == "succeeded"
    items = _items(run, "send")
    assert [(i.status, i.attempts) for i in items] == [("succeeded", 1), ("failed", 0), ("succeeded", 1)]
    assert (items[1].error or {}).get("code") == "input_invalid"


@pytest.mark.parametrize(
    ("foreach", "params", "code"),
    [
        ("${params.value}", {"value": {"a": 1}}, "foreach_not_a_list"),
        ("${params.value}", {}, "foreach_not_a_list"),
        ("${params.value}", {"value": list(range(6))}, "foreach_too_many_items"),
    ],
    ids=["object", "null", "too-many"],
)
def test_a_foreach_that_gives_no_usable_list_fails_the_step(
    agent: Any, foreach: str, params: dict[str, Any], code: str
) -> None:
    payload = {"params": params, "pipeline": [{"id": "each", "uses": "orchestrator.echo", "foreach": foreach}]}
    with override_settings(ORDINAUT_MAX_FOREACH_ITEMS=5):
        run = _run(agent.agent, payload)

    assert run.status == "failed"
    assert (run.error or {}).get("code") == code
    assert _items(run, "each") == []


def test_budgets_count_each_items_tool_call(agent: Any, server: LoopbackServer) -> None:
    Agent.objects.filter(pk=agent.agent.pk).update(tool_calls_per_day=3)
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": [0, 1, 2, 3, 4],
                "with": {"url": server.url("/") + "${item}"},
                "on_error": "continue",
            }
        ]
    }
    run = _run(agent.agent, payload)

    items = _items(run, "fetch")
    assert [i.status for i in items] == ["succeeded", "succeeded", "succeeded", "failed", "failed"]
    assert {(i.error or {}).get("code") for i in items[3:]} == {"budget_exceeded"}
    assert sum(server.count(f"/{n}") for n in range(5)) == 3
    budget = agent.client.get("/agents/me").json()["budget"]
    assert budget["tool_calls"] == {"used": 3, "limit": 3}


def test_replay_from_the_failed_step_runs_only_the_items_that_did_not_succeed(
    agent: Any, server: LoopbackServer
) -> None:
    server.script("/1", Reply(404))
    payload = {
        "pipeline": [
            {"id": "list", "uses": "orchestrator.echo", "with": {"pages": [0, 1, 2]}},
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": "${steps.list.pages}",
                "with": {"url": server.url("/") + "${item}"},
            },
        ]
    }
    first = _run(agent.agent, payload)
    assert first.status == "failed"
    assert [server.count(f"/{n}") for n in range(3)] == [1, 1, 0]

    server.script("/1", Reply(200, {"ok": True}))
    replay = run_replay(run=first, from_="failed_step", actor=SYSTEM)
    drive(replay.pk, start=1)
    replay.refresh_from_db()

    assert replay.status == "succeeded"
    assert [server.count(f"/{n}") for n in range(3)] == [1, 2, 1], "item 0 was not called again"
    items = _items(replay, "fetch")
    assert [i.status for i in items] == ["succeeded"] * 3
    assert items[0].output == _items(first, "fetch")[0].output


def test_cancel_skips_the_items_not_done(agent: Any) -> None:
    payload = {
        "pipeline": [{"id": "each", "uses": "orchestrator.echo", "foreach": [1, 2, 3], "with": {"v": "${item}"}}]
    }
    run = run_create(task=make_task(agent.agent, payload), trigger="manual")
    from runs.engine import step_execute
    from runs.fanout import item_execute

    step_execute(run_id=str(run.pk), index=0, claim_id="parent")  # fans out; items are sent
    item_execute(run_id=str(run.pk), index=0, item_index=0, claim_id="item-0")

    run_cancel(run=Run.objects.get(pk=run.pk), actor=SYSTEM)

    items = _items(run, "each")
    assert [(i.status, i.skip_reason) for i in items] == [
        ("succeeded", ""),
        ("skipped", "canceled"),
        ("skipped", "canceled"),
    ]
    assert item_execute(run_id=str(run.pk), index=0, item_index=1, claim_id="item-1") is Next.STOP
    assert StepItem.objects.get(step__run=run, index=1).status == "skipped"


def test_a_foreach_step_claimed_again_sends_only_lost_and_pending_items(agent: Any, monkeypatch: Any) -> None:
    """The sweeper re-dispatches a run whose items were lost: items done stay done, an item in
    flight within its deadline is left to its job, an item past its deadline goes again."""
    from runs.engine import step_execute
    from runs.fanout import item_execute
    from runs.services.items import item_claim

    sent: list[list[int]] = []
    monkeypatch.setattr(
        "runs.fanout.items_dispatch_on_commit", lambda **kwargs: sent.append(list(kwargs["item_indexes"]))
    )
    payload = {
        "pipeline": [{"id": "each", "uses": "orchestrator.echo", "foreach": [0, 1, 2, 3], "with": {"v": "${item}"}}]
    }
    run = run_create(task=make_task(agent.agent, payload), trigger="manual")
    step_execute(run_id=str(run.pk), index=0, claim_id="parent-1")
    assert sent == [[0, 1, 2, 3]]
    item_execute(run_id=str(run.pk), index=0, item_index=0, claim_id="a")
    step = StepRun.objects.get(run=run)
    # Items 1 and 2 are claimed by jobs that then die; item 1's deadline has passed.
    run_now = Run.objects.select_related("task").get(pk=run.pk)
    lost = item_claim(run=run_now, index=0, item_index=1, claim_id="dead", timeout_s=1)
    assert lost is not None
    assert item_claim(run=run_now, index=0, item_index=2, claim_id="dead-too", timeout_s=1) is not None
    StepItem.objects.filter(step=step, index=1).update(deadline_at=timezone.now() - timedelta(seconds=1))
    StepItem.objects.filter(step=step, index=2).update(deadline_at=timezone.now() + timedelta(minutes=5))
    StepRun.objects.filter(pk=step.pk).update(status="pending", claim_id="")  # what the sweeper does

    step_execute(run_id=str(run.pk), index=0, claim_id="parent-2")

    assert sent[-1] == [1, 3]
    states = dict(StepItem.objects.filter(step=step).values_list("index", "status"))
    assert states == {0: "succeeded", 1: "pending", 2: "running", 3: "pending"}
    assert item_execute(run_id=str(run.pk), index=0, item_index=1, claim_id="b") is Next.CONTINUE
    item = StepItem.objects.get(step=step, index=1)
    assert (item.status, item.attempts) == ("succeeded", 2)
    assert [h["outcome"] for h in item.attempt_history] == ["lost", "succeeded"]
    assert item.attempt_history[0]["started_at"] == lost.at.isoformat(), "a lost attempt keeps its start"


def test_the_last_item_to_finish_settles_the_step_once(agent: Any) -> None:
    from runs.engine import step_execute
    from runs.fanout import item_execute

    payload = {
        "pipeline": [
            {"id": "each", "uses": "orchestrator.echo", "foreach": [0, 1], "with": {"v": "${item}"}},
            {"id": "next", "uses": "orchestrator.echo"},
        ]
    }
    run = run_create(task=make_task(agent.agent, payload), trigger="manual")
    assert step_execute(run_id=str(run.pk), index=0, claim_id="parent") is Next.STOP
    assert item_execute(run_id=str(run.pk), index=0, item_index=1, claim_id="b") is Next.CONTINUE
    assert _step(run, "each").status == "running"
    assert item_execute(run_id=str(run.pk), index=0, item_index=0, claim_id="a") is Next.STOP
    assert _step(run, "each").status == "succeeded"
    # A redelivered item message changes nothing.
    assert item_execute(run_id=str(run.pk), index=0, item_index=0, claim_id="a-again") is Next.STOP
    assert _step(run, "each").output == [{"v": 0}, {"v": 1}]
    assert Run.objects.get(pk=run.pk).status == "running", "the next step is sent, not yet run"
