"""kill -9 of a worker in the middle of a step: the run still finishes, and the steps that had
succeeded are not executed again. Recovery by the sweeper, and by the broker's redelivery."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runs.models import StepRun
from runs.services import runs_sweep
from tests.support.pipelines import finished, start_manual_run
from tests.support.processes import Worker, wait_for
from tests.support.servers import LoopbackServer, loopback_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

# Small enough that the broker hands an unacknowledged message out again within the test (the
# visibility timeout must exceed step timeout + hard time limit grace + countdown).
REDELIVERY_ENV = {
    "ORDINAUT_MAX_STEP_TIMEOUT_S": "2",
    "ORDINAUT_MAX_COUNTDOWN_S": "1",
    "ORDINAUT_HARD_TIME_LIMIT_GRACE_S": "0",
    "CELERY_VISIBILITY_TIMEOUT_S": "4",
}


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        yield srv


def _payload(server: LoopbackServer) -> dict[str, Any]:
    return {
        "pipeline": [
            {"id": "before", "uses": "orchestrator.http", "with": {"url": server.url("/before")}},
            {
                "id": "during",
                "uses": "orchestrator.http",
                "with": {"url": server.url("/during")},
                "timeout_seconds": 2,
            },
            {"id": "after", "uses": "orchestrator.http", "with": {"url": server.url("/after")}},
        ]
    }


def _kill_during_the_step(
    agent: Any, server: LoopbackServer, workers: list[Worker], worker_logs: Path, env: dict[str, str]
) -> str:
    doomed = Worker(worker_logs, concurrency=1, env=env).start()
    workers.append(doomed)
    server.hold("/during")
    run_id = start_manual_run(agent.client, _payload(server))
    wait_for(lambda: server.count("/during") == 1, message="the step to be in its tool call")

    doomed.stop(signal.SIGKILL)
    server.release("/during")
    return run_id


def _assert_finished_without_repeating_succeeded_steps(run_id: str, server: LoopbackServer) -> None:
    run = wait_for(lambda: finished(run_id), timeout=60, message="the run to finish after the kill")
    assert run.status == "succeeded", run.error
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    assert server.count("/before") == 1, "a succeeded step ran again"
    assert steps["before"].attempts == 1
    assert server.count("/during") == 2, "the interrupted step ran again (at-least-once)"
    assert steps["during"].attempts == 2
    assert [h["outcome"] for h in steps["during"].attempt_history] == ["lost", "succeeded"]
    assert server.count("/after") == 1


def test_sweeper_recovers_a_run_whose_worker_was_killed_mid_step(
    agent: Any, server: LoopbackServer, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> None:
    # A short grace: the sweeper may call the step lost 1 s after its 2 s timeout.
    run_id = _kill_during_the_step(agent, server, workers, worker_logs, {"ORDINAUT_RUNNING_GRACE_S": "1"})
    assert StepRun.objects.get(run_id=run_id, step_id="during").status == "running"

    wait_for(lambda: runs_sweep()["runs_recovered"], timeout=30, message="the sweeper to re-dispatch the run")
    workers.append(Worker(worker_logs).start())

    _assert_finished_without_repeating_succeeded_steps(run_id, server)


def test_broker_redelivery_resumes_the_step_with_the_same_claim(
    agent: Any, server: LoopbackServer, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> None:
    run_id = _kill_during_the_step(agent, server, workers, worker_logs, REDELIVERY_ENV)
    claim = StepRun.objects.get(run_id=run_id, step_id="during").claim_id
    # A worker starting after the visibility timeout puts the unacknowledged message back first.
    time.sleep(float(REDELIVERY_ENV["CELERY_VISIBILITY_TIMEOUT_S"]) + 0.5)
    workers.append(Worker(worker_logs, env=REDELIVERY_ENV).start())

    _assert_finished_without_repeating_succeeded_steps(run_id, server)
    assert StepRun.objects.get(run_id=run_id, step_id="during").claim_id == claim
