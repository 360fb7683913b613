"""The engine on a real worker: retries through broker countdowns, waits, and the seed's pipelines."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from runs.models import Run, StepRun
from tests.pipelines.seed import EMAIL_FOLLOWUP, MORNING_BRIEFING
from tests.support.pipelines import finished, start_manual_run
from tests.support.processes import wait_for
from tests.support.servers import LoopbackServer, Reply, loopback_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture
def server() -> Any:
    with loopback_server() as srv:
        yield srv


def test_flaky_tool_succeeds_on_attempt_3_after_growing_delays(agent: Any, worker: Any, server: LoopbackServer) -> None:
    server.script("/flaky", Reply(503), Reply(503), Reply(200, {"ok": True}))
    payload = {
        "pipeline": [
            {
                "id": "call",
                "uses": "orchestrator.http",
                "with": {"url": server.url("/flaky")},
                "retry": {"max_attempts": 3, "backoff_seconds": 0.5},
            },
            {"id": "after", "uses": "orchestrator.echo", "with": {"got": "${steps.call.json}"}},
        ]
    }
    run_id = start_manual_run(agent.client, payload)

    run = wait_for(lambda: finished(run_id), message="the run to finish")

    assert run.status == "succeeded", run.error
    assert run.result == {"got": {"ok": True}}
    body = agent.client.get(f"/runs/{run_id}").json()
    call = body["steps"][0]
    assert (call["status"], call["attempts"]) == ("succeeded", 3)
    history = call["attempt_history"]
    assert [h["outcome"] for h in history] == ["retry", "retry", "succeeded"]
    delays = [h["retry_in_s"] for h in history[:2]]
    assert delays[1] > delays[0]
    # The countdowns really were waited out: each retry came no sooner than its delay.
    times = server.times("/flaky")
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps[0] >= delays[0] - 0.05
    assert gaps[1] >= delays[1] - 0.05


def test_a_short_wait_resumes_on_its_own(agent: Any, worker: Any) -> None:
    payload = {
        "pipeline": [
            {"id": "pause", "uses": "orchestrator.wait", "with": {"seconds": 1}},
            {"id": "after", "uses": "orchestrator.echo", "with": {"until": "${steps.pause.waited_until}"}},
        ]
    }
    run_id = start_manual_run(agent.client, payload)

    run = wait_for(lambda: finished(run_id), message="the run to finish")

    assert run.status == "succeeded", run.error
    pause = StepRun.objects.get(run=run, step_id="pause")
    assert pause.attempts == 1
    assert pause.finished_at is not None
    assert pause.started_at is not None
    assert (pause.finished_at - pause.started_at).total_seconds() >= 1


def test_morning_briefing_runs_end_to_end(agent: Any, worker: Any) -> None:
    fields = {"timezone": MORNING_BRIEFING["timezone"], "title": MORNING_BRIEFING["title"]}
    run_id = start_manual_run(agent.client, MORNING_BRIEFING["payload"], **fields)

    run = wait_for(lambda: finished(run_id), message="the run to finish")

    assert run.status == "succeeded", run.error
    assert run.result == {"message_id": 1, "text": "2 events today; weather sunny."}
    calendar = StepRun.objects.get(run=run, step_id="calendar")
    assert (calendar.input or {})["start"] == run.context["now"]


def test_email_followup_waits_for_approval_and_sends_the_approved_subset(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, EMAIL_FOLLOWUP["payload"])

    run = wait_for(lambda: finished(run_id), message="the run to wait for approval")
    assert run.status == Run.Status.WAITING_APPROVAL
    (pending,) = agent.client.get("/approvals?status=pending").json()["results"]
    assert pending["message"] == "Review 2 follow-up emails"
    first = pending["data"][0]

    approved = agent.client.post(f"/runs/{run_id}/approve", {"items": [first]}, format="json")
    assert approved.status_code == 200, approved.json()

    run = wait_for(lambda: finished(run_id), message="the rest of the pipeline")
    assert run.status == "succeeded", run.error
    assert run.result == {"sent": 1, "threads": ["t1"]}


def test_a_tool_that_ignores_its_timeout_is_stopped_by_the_time_limit(agent: Any, worker: Any) -> None:
    payload = {
        "pipeline": [
            {
                "id": "hang",
                "uses": "testing.sleep",
                "with": {"seconds": 30},
                "timeout_seconds": 1,
                "retry": {"max_attempts": 1},
            },
            {"id": "never", "uses": "orchestrator.echo"},
        ]
    }
    run_id = start_manual_run(agent.client, payload)

    run = wait_for(lambda: finished(run_id), message="the run to fail on the time limit")

    assert run.status == "failed"
    assert (run.error or {})["code"] == "timeout"
    hang = StepRun.objects.get(run=run, step_id="hang")
    assert hang.duration_ms is not None
    assert hang.duration_ms < 30_000
