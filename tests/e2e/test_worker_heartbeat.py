"""Real workers and their heartbeat: a worker killed -9 mid-step is declared dead within
ORDINAUT_WORKER_DEAD_AFTER_S and its step re-run on the other worker long before the run's
deadline; a worker busy in a long tool call is never declared dead; a worker that was only frozen
comes back and its late result is refused; a worker stopped with SIGTERM signs off."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ordinaut_site import liveness
from runs.models import Run, StepRun
from runs.services import runs_sweep
from tests.support.pipelines import finished, start_manual_run
from tests.support.processes import Worker, wait_for
from tests.support.servers import LoopbackServer, loopback_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

HEARTBEAT_S, DEAD_AFTER_S = 1, 3
# The step's own timeout (and so the run's deadline) is long: only the heartbeat can explain a
# recovery within the test.
ENV = {"ORDINAUT_WORKER_HEARTBEAT_S": str(HEARTBEAT_S), "ORDINAUT_WORKER_DEAD_AFTER_S": str(DEAD_AFTER_S)}


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        yield srv


@pytest.fixture(autouse=True)
def dead_after(settings: Any) -> None:
    settings.ORDINAUT_WORKER_DEAD_AFTER_S = DEAD_AFTER_S  # what this process' sweeps assume of Redis' uptime


def payload(server: LoopbackServer) -> dict[str, Any]:
    return {
        "pipeline": [
            {"id": "before", "uses": "orchestrator.http", "with": {"url": server.url("/before")}},
            {
                "id": "during",
                "uses": "orchestrator.http",
                "with": {"url": server.url("/during")},
                "timeout_seconds": 60,
            },
            {"id": "after", "uses": "orchestrator.http", "with": {"url": server.url("/after")}},
        ]
    }


def incarnation_of(worker: Worker, client: redis.Redis) -> str:
    names = [m.decode() for m in client.smembers(liveness.registry_key())]  # type: ignore[union-attr]
    [name] = [n for n in names if n.startswith(worker.name + ":")]
    return name


def step_held(agent: Any, server: LoopbackServer, worker: Worker) -> str:
    server.hold("/during")
    run_id = start_manual_run(agent.client, payload(server))
    wait_for(lambda: server.count("/during") == 1, message="the step to be in its tool call")
    return run_id


def sweep_until_recovered(timeout: float) -> float:
    started = time.monotonic()
    wait_for(lambda: runs_sweep()["runs_recovered"], timeout=timeout, message="the sweeper to recover the run")
    return time.monotonic() - started


def assert_during_ran_twice_and_succeeded_once(run_id: str, server: LoopbackServer) -> None:
    run = wait_for(lambda: finished(run_id), timeout=60, message="the run to finish")
    assert run.status == "succeeded", run.error
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    assert (server.count("/before"), server.count("/during"), server.count("/after")) == (1, 2, 1)
    assert steps["during"].attempts == 2
    assert [h["outcome"] for h in steps["during"].attempt_history] == ["lost", "succeeded"]


def test_a_killed_worker_is_declared_dead_and_its_step_rerun_on_the_other_worker(
    agent: Any,
    server: LoopbackServer,
    session_worker_paused: None,
    workers: list[Worker],
    worker_logs: Path,
    redis_client: redis.Redis,
) -> None:
    doomed = Worker(worker_logs, concurrency=1, env=ENV).start()
    workers.append(doomed)
    run_id = step_held(agent, server, doomed)
    workers.append(Worker(worker_logs, env=ENV).start())  # the survivor
    name = incarnation_of(doomed, redis_client)
    claim = StepRun.objects.get(run_id=run_id, step_id="during").claim_id
    assert redis_client.hexists(liveness.inflight_key(name), claim), "the job is listed in flight"
    deadline = Run.objects.get(pk=run_id).deadline_at

    doomed.stop(signal.SIGKILL)
    server.release("/during")
    took = sweep_until_recovered(timeout=DEAD_AFTER_S * 10)

    assert deadline is not None
    print(f"\nworker killed -9: run recovered {took:.1f}s later (dead after {DEAD_AFTER_S}s)")
    assert_during_ran_twice_and_succeeded_once(run_id, server)
    assert not redis_client.sismember(liveness.registry_key(), name), "the dead worker is forgotten"


def test_a_worker_busy_in_a_long_call_is_not_declared_dead(
    agent: Any,
    server: LoopbackServer,
    session_worker_paused: None,
    workers: list[Worker],
    worker_logs: Path,
    redis_client: redis.Redis,
) -> None:
    busy = Worker(worker_logs, concurrency=1, env=ENV).start()
    workers.append(busy)
    run_id = step_held(agent, server, busy)

    # Several lifetimes of the alive key pass while the pool process waits for the tool.
    until = time.monotonic() + DEAD_AFTER_S * 3
    while time.monotonic() < until:
        assert runs_sweep()["runs_recovered"] == 0
        assert incarnation_of(busy, redis_client) in liveness.workers_alive()
        time.sleep(0.5)
    server.release("/during")

    run = wait_for(lambda: finished(run_id), timeout=60, message="the run to finish")
    assert run.status == "succeeded"
    assert StepRun.objects.get(run=run, step_id="during").attempts == 1
    assert server.count("/during") == 1


def test_a_frozen_worker_that_comes_back_has_its_late_result_refused(
    agent: Any,
    server: LoopbackServer,
    session_worker_paused: None,
    workers: list[Worker],
    worker_logs: Path,
    redis_client: redis.Redis,
) -> None:
    frozen = Worker(worker_logs, concurrency=1, env=ENV).start()
    workers.append(frozen)
    run_id = step_held(agent, server, frozen)
    workers.append(Worker(worker_logs, env=ENV).start())
    name = incarnation_of(frozen, redis_client)
    assert frozen.proc is not None

    old_claim = StepRun.objects.get(run_id=run_id, step_id="during").claim_id

    os.killpg(frozen.proc.pid, signal.SIGSTOP)  # cut off: no heartbeat, its call in flight
    try:
        sweep_until_recovered(timeout=DEAD_AFTER_S * 10)
        server.release("/during")  # both calls are answered; only the new one can report
        assert_during_ran_twice_and_succeeded_once(run_id, server)
        before = StepRun.objects.get(run_id=run_id, step_id="during")
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)

    # Back: it beats again, and its job ends (the late success is refused by the claim check).
    wait_for(lambda: name in liveness.workers_alive(), timeout=30, message="the worker to beat again")
    wait_for(lambda: f"[{old_claim}] succeeded" in frozen.log_text(), timeout=30, message="its job to end")
    after = StepRun.objects.get(run_id=run_id, step_id="during")
    assert (after.status, after.claim_id, after.attempts, after.finished_at) == (
        "succeeded",
        before.claim_id,
        2,
        before.finished_at,
    )
    assert server.count("/after") == 1, "its chain stopped: the next step did not run again"
    assert Run.objects.get(pk=run_id).status == "succeeded"


def test_a_worker_stopped_with_sigterm_signs_off(
    worker_logs: Path, workers: list[Worker], redis_client: redis.Redis
) -> None:
    worker = Worker(worker_logs, concurrency=1, env=ENV).start()
    workers.append(worker)
    name = incarnation_of(worker, redis_client)
    assert redis_client.exists(liveness.alive_key(name))

    worker.stop(signal.SIGTERM)

    assert not redis_client.exists(liveness.alive_key(name))
    assert not redis_client.sismember(liveness.registry_key(), name)
    assert "signed off" in worker.log_text()
