"""Cancel mid-pipeline and replay from the failed step, on a real worker."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.celery import app
from runs.models import Run, StepRun
from tests.support.pipelines import echo_pipeline, finished, start_manual_run
from tests.support.processes import wait_for
from tests.support.servers import LoopbackServer, Reply, loopback_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture
def server() -> Any:
    with loopback_server() as srv:
        yield srv


def _no_active_jobs(worker: Any) -> bool:
    active = app.control.inspect(destination=[worker.name], timeout=1).active() or {}
    return not active.get(worker.name)


def test_cancel_mid_pipeline_no_later_step_starts(agent: Any, worker: Any, server: LoopbackServer) -> None:
    server.hold("/slow")
    payload = {
        "pipeline": [
            {"id": "first", "uses": "orchestrator.echo", "with": {"a": 1}},
            {"id": "slow", "uses": "orchestrator.http", "with": {"url": server.url("/slow")}},
            {"id": "later", "uses": "orchestrator.http", "with": {"url": server.url("/later")}},
        ]
    }
    run_id = start_manual_run(agent.client, payload)
    wait_for(lambda: server.count("/slow") == 1, message="the slow step to call its server")

    response = agent.client.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "canceled"
    server.release("/slow")
    wait_for(lambda: _no_active_jobs(worker), message="the slow step's job to end")
    # A sentinel run through the same FIFO queue: had the chain gone on, its next message would
    # have been taken before this one.
    sentinel = start_manual_run(agent.client, echo_pipeline(1))
    wait_for(lambda: finished(sentinel), message="the sentinel run")
    wait_for(lambda: _no_active_jobs(worker), message="every earlier job to end")

    run = Run.objects.get(pk=run_id)
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    assert run.status == "canceled"
    assert steps["first"].status == "succeeded"
    assert (steps["slow"].status, (steps["slow"].error or {})["code"]) == ("failed", "canceled")
    assert (steps["later"].status, steps["later"].started_at) == ("pending", None)
    assert server.count("/later") == 0


def test_replay_from_the_failed_step_reuses_earlier_outputs(agent: Any, worker: Any, server: LoopbackServer) -> None:
    server.script("/fetch", Reply(200, {"value": 42}))
    server.script("/flaky", Reply(500))
    payload = {
        "pipeline": [
            {"id": "fetch", "uses": "orchestrator.http", "with": {"url": server.url("/fetch")}},
            {
                "id": "use",
                "uses": "orchestrator.http",
                "with": {"url": server.url("/flaky"), "method": "POST", "json": {"v": "${steps.fetch.json.value}"}},
                "retry": {"max_attempts": 1},
            },
        ]
    }
    run_id = start_manual_run(agent.client, payload)
    failed = wait_for(lambda: finished(run_id), message="the first run to fail")
    assert failed.status == "failed"
    assert (failed.error or {})["step_id"] == "use"

    server.script("/flaky", Reply(200, {"stored": True}))
    response = agent.client.post(f"/runs/{run_id}/replay", {"from": "failed_step"}, format="json")
    assert response.status_code == 202, response.json()
    replay_id = response.json()["id"]

    replay = wait_for(lambda: finished(replay_id), message="the replay to finish")
    assert replay.status == "succeeded", replay.error
    assert replay.replay_of_id == failed.pk
    assert server.count("/fetch") == 1, "the step that had succeeded was not run again"
    assert server.hits[-1].body == b'{"v":42}', "its stored output fed the replayed step"
    fetch = StepRun.objects.get(run=replay, step_id="fetch")
    assert (fetch.status, fetch.attempts, fetch.output) == (
        "succeeded",
        0,
        StepRun.objects.get(run=failed, step_id="fetch").output,
    )
