"""The recovery sweeper on its real schedule: beat sends runs.sweep, a worker runs it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runs.models import Approval, Run, StepRun
from tasks.scheduler import leader_key
from tests.support.pipelines import approval_payload, finished, start_manual_run
from tests.support.processes import Beat, Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

SWEEP_EVERY_S = "1"


@pytest.fixture
def beat(worker_logs: Path, redis_client: Any) -> Iterator[Callable[[], Beat]]:
    started: list[Beat] = []
    redis_client.delete(leader_key())

    def start() -> Beat:
        proc = Beat(worker_logs, "sweeper", env={"ORDINAUT_SWEEP_INTERVAL_S": SWEEP_EVERY_S}).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
    redis_client.delete(leader_key())


def test_beat_runs_the_sweeper_that_expires_an_approval(agent: Any, worker: Worker, beat: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload(timeout_seconds=1))
    run = wait_for(lambda: finished(run_id), message="the run to ask for approval")
    assert run.status == "waiting_approval"

    beat()

    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=Run.TERMINAL).first(),
        timeout=60,
        message="beat's sweeper to expire the approval and the run to finish",
    )
    assert (run.status, run.error) == ("succeeded", None)
    assert Approval.objects.get(run=run).status == "expired"


def test_a_parked_wait_is_resumed_by_beats_sweeper(
    agent: Any, beat: Any, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> None:
    # This worker keeps at most 1 s in the broker: a 2 s wait is parked in the database.
    workers.append(Worker(worker_logs, env={"ORDINAUT_MAX_COUNTDOWN_S": "1"}).start())
    payload = {
        "pipeline": [
            {"id": "pause", "uses": "orchestrator.wait", "with": {"seconds": 2}},
            {"id": "after", "uses": "orchestrator.echo", "with": {"until": "${steps.pause.waited_until}"}},
        ]
    }
    run_id = start_manual_run(agent.client, payload)
    wait_for(
        lambda: StepRun.objects.filter(run_id=run_id, step_id="pause", resume_at__isnull=False).exists(),
        message="the wait to be parked",
    )
    assert Run.objects.get(pk=run_id).dispatch_count == 1

    beat()

    run = wait_for(lambda: finished(run_id), timeout=60, message="the sweeper to resume the parked wait")
    assert run.status == "succeeded", run.error
    assert run.dispatch_count == 2, "the rest was sent again by the sweeper"
    pause = StepRun.objects.get(run=run, step_id="pause")
    assert pause.attempts == 1
    assert (run.result or {})["until"] == (pause.output or {})["waited_until"]
