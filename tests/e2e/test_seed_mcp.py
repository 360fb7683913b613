"""The seed's two example tasks (tests/pipelines/seed.py), their bodies verbatim through POST /tasks,
on a worker of their own that has no Python test tools: every `uses` resolves to a real MCP server
on loopback named as the seed names it (tests/support/seed_mcp_servers.py)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.celery import app
from runs.models import Approval, Run
from tests.pipelines.seed import EMAIL_FOLLOWUP, MORNING_BRIEFING
from tests.support.pipelines import finished
from tests.support.processes import Worker, wait_for
from tests.support.seed_mcp_servers import (
    FIRST_MESSAGE_ID,
    SEED_SERVERS,
    THREADS,
    SeedServers,
    briefing_text,
    followup_text,
    register_seed_servers,
    seed_servers,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

TONE = "professional_friendly"


@pytest.fixture(scope="module")
def running_servers() -> Iterator[SeedServers]:
    with seed_servers() as servers:
        yield servers


@pytest.fixture
def seed_mcp(
    running_servers: SeedServers, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> Iterator[SeedServers]:
    """The seed's servers in the catalog and the only worker consuming: one without the Python test
    tools of the same names (they would win the name clash over the catalog)."""
    running_servers.reset()
    registered = register_seed_servers(running_servers)
    assert {server.name: sorted(tool.name for tool in server.tools.all()) for server in registered} == SEED_SERVERS
    worker = Worker(worker_logs, env={"ORDINAUT_TOOL_MODULES": ""}).start()
    workers.append(worker)
    yield running_servers
    worker.wait_idle()


def start_seed_task(client: Any, seed: dict[str, Any]) -> str:
    """POST /tasks with the seed's body verbatim, then run it now; the run's id."""
    created = client.post("/tasks", copy.deepcopy(seed), format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["payload"]["pipeline"] == seed["payload"]["pipeline"]
    started = client.post(f"/tasks/{created.json()['id']}/run_now", format="json")
    assert started.status_code == 202, started.json()
    return str(started.json()["id"])


def steps_of(client: Any, run_id: str) -> dict[str, dict[str, Any]]:
    """The run's steps as GET /runs/{id} shows them, by step id."""
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200, response.json()
    return {step["id"]: step for step in response.json()["steps"]}


# --- The morning briefing ------------------------------------------------------------------------


def test_the_morning_briefing_runs_on_the_seeds_mcp_servers_and_telegram_gets_the_summary(
    agent: Any, seed_mcp: SeedServers
) -> None:
    run_id = start_seed_task(agent.client, MORNING_BRIEFING)

    run = wait_for(lambda: finished(run_id), timeout=60, message="the morning briefing to finish")

    assert (run.status, run.error) == ("succeeded", None)
    steps = steps_of(agent.client, run_id)
    assert list(steps) == ["calendar", "weather", "summarize", "notify"]
    assert {step_id: step["uses"] for step_id, step in steps.items()} == {
        "calendar": "google-calendar-mcp.list_events",
        "weather": "weather-mcp.forecast",
        "summarize": "llm.plan",
        "notify": "telegram-mcp.send_message",
    }
    assert all(step["status"] == "succeeded" and step["attempts"] == 1 for step in steps.values())

    calendar = steps["calendar"]
    start, end = calendar["input"]["start"], calendar["input"]["end"]
    assert start == run.context["now"]
    assert datetime.fromisoformat(end) - datetime.fromisoformat(start) == timedelta(hours=24)
    events = {"events": [{"title": "Standup", "start": start}, {"title": "Design review", "end": end}]}
    assert calendar["output"] == events

    weather = {"city": "Chisinau", "summary": "sunny", "high_c": 21.5}
    assert (steps["weather"]["input"], steps["weather"]["output"]) == ({"city": "Chisinau"}, weather)

    text = briefing_text("Create morning briefing", events, weather)
    assert text == "Create morning briefing: 2 events (Standup, Design review); Chisinau sunny, high 21.5 C."
    assert steps["summarize"]["input"] == {
        "instruction": "Create morning briefing",
        "calendar": events,
        "weather": weather,
    }
    assert steps["summarize"]["output"] == {"text": text}

    assert steps["notify"]["input"] == {"chat_id": 12345, "text": text}
    assert steps["notify"]["output"] == {"message_id": FIRST_MESSAGE_ID, "text": text}
    assert seed_mcp.telegram_messages == [{"chat_id": 12345, "text": text}]
    assert run.result == {"message_id": FIRST_MESSAGE_ID, "text": text}


# --- The e-mail follow-ups -------------------------------------------------------------------------


THREADS_FOUND = [{**thread, "lookback_days": 7, "min_age_hours": 72} for thread in THREADS]
DRAFTS = [{"thread": thread["id"], "to": thread["to"], "text": followup_text(thread, TONE)} for thread in THREADS_FOUND]


def wait_for_the_approval(client: Any, run_id: str) -> dict[str, Any]:
    """The run parked on its approval, the first two steps recorded; the pending approval."""
    run = wait_for(lambda: finished(run_id), timeout=60, message="the follow-ups to ask for approval")
    assert run.status == Run.Status.WAITING_APPROVAL, run.error
    steps = steps_of(client, run_id)
    assert [(step_id, step["status"]) for step_id, step in steps.items()] == [
        ("scan_outbox", "succeeded"),
        ("generate_followups", "succeeded"),
        ("request_approval", "running"),
        ("send_approved", "pending"),
    ]
    assert steps["scan_outbox"]["input"] == {"lookback_days": 7, "min_age_hours": 72}
    assert steps["scan_outbox"]["output"] == {"threads": THREADS_FOUND}
    assert steps["generate_followups"]["input"] == {"emails": THREADS_FOUND, "tone": TONE}
    assert steps["generate_followups"]["output"] == {"count": 2, "messages": DRAFTS}
    assert steps["request_approval"]["input"] == {"message": "Review 2 follow-up emails", "data": DRAFTS}

    (pending,) = client.get(f"/approvals?status=pending&run_id={run_id}").json()["results"]
    assert (pending["message"], pending["data"]) == ("Review 2 follow-up emails", DRAFTS)
    return dict(pending)


def wait_for_the_end(client: Any, run_id: str) -> tuple[Run, dict[str, dict[str, Any]]]:
    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=Run.TERMINAL).first(),
        timeout=60,
        message="the rest of the follow-up pipeline",
    )
    assert (run.status, run.error) == ("succeeded", None)
    return run, steps_of(client, run_id)


@pytest.mark.parametrize(
    ("items", "sent"),
    [pytest.param(None, DRAFTS, id="approve-all"), pytest.param([DRAFTS[1]], [DRAFTS[1]], id="approve-a-subset")],
)
def test_approved_follow_ups_and_only_those_are_sent_by_gmail_mcp(
    agent: Any, seed_mcp: SeedServers, items: list[Any] | None, sent: list[Any]
) -> None:
    run_id = start_seed_task(agent.client, EMAIL_FOLLOWUP)
    wait_for_the_approval(agent.client, run_id)
    assert seed_mcp.sent_drafts == []

    body = {} if items is None else {"items": items}
    approved = agent.client.post(f"/runs/{run_id}/approve", body, format="json")
    assert approved.status_code == 200, approved.json()

    run, steps = wait_for_the_end(agent.client, run_id)
    assert seed_mcp.sent_drafts == [sent], "gmail-mcp was asked to send exactly the approved drafts, once"
    approval = steps["request_approval"]
    assert approval["status"] == "succeeded"
    assert approval["output"]["status"] == "approved"
    assert approval["output"]["approved_items"] == sent
    assert approval["output"]["decided_by"]["name"] == agent.agent.name
    send = steps["send_approved"]
    assert (send["status"], send["skip_reason"], send["attempts"]) == ("succeeded", "", 1)
    assert send["uses"] == "gmail-mcp.send_followups"
    assert send["input"] == {"drafts": sent}
    threads = [draft["thread"] for draft in sent]
    assert send["output"] == {"sent": len(sent), "threads": threads}
    assert run.result == {"sent": len(sent), "threads": threads}


def _assert_nothing_sent(run: Run, steps: dict[str, dict[str, Any]], seed_mcp: SeedServers, decision: str) -> None:
    approval = steps["request_approval"]
    assert approval["status"] == "succeeded"
    assert (approval["output"]["status"], approval["output"]["approved_items"]) == (decision, [])
    send = steps["send_approved"]
    assert (send["status"], send["skip_reason"], send["attempts"]) == ("skipped", "condition", 0)
    assert send["output"] is None
    assert seed_mcp.sent_drafts == [], "gmail-mcp was asked to send nothing"
    assert Approval.objects.get(run=run).status == decision


def test_rejected_follow_ups_are_not_sent_and_the_run_succeeds(agent: Any, seed_mcp: SeedServers) -> None:
    run_id = start_seed_task(agent.client, EMAIL_FOLLOWUP)
    wait_for_the_approval(agent.client, run_id)

    rejected = agent.client.post(f"/runs/{run_id}/reject", {"comment": "not this week"}, format="json")
    assert rejected.status_code == 200, rejected.json()

    run, steps = wait_for_the_end(agent.client, run_id)
    _assert_nothing_sent(run, steps, seed_mcp, "rejected")
    assert steps["request_approval"]["output"]["comment"] == "not this week"


def test_expired_follow_ups_are_not_sent_and_the_run_succeeds(agent: Any, seed_mcp: SeedServers) -> None:
    run_id = start_seed_task(agent.client, EMAIL_FOLLOWUP)
    wait_for_the_approval(agent.client, run_id)
    # The seed's approval has no timeout_seconds of its own: its deadline is moved into the past.
    moved = Approval.objects.filter(run_id=run_id, status=Approval.Status.PENDING).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert moved == 1

    # What beat does every ORDINAUT_SWEEP_INTERVAL_S: the sweeper job, on the (only) worker.
    app.send_task("runs.sweep")

    run, steps = wait_for_the_end(agent.client, run_id)
    _assert_nothing_sent(run, steps, seed_mcp, "expired")
