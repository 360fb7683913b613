"""foreach on real workers: items run in parallel across two worker processes within max_parallel,
an item fails then succeeds on retry, and a worker killed mid-fan-out loses no item and repeats
none but the items it had in flight."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ordinaut_site.celery import app
from runs.models import StepItem, StepRun
from runs.services import ITEM_JOB_NAME, runs_sweep
from tests.support.pipelines import finished, start_manual_run
from tests.support.processes import Worker, wait_for
from tests.support.servers import LoopbackServer, Reply, loopback_server

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with loopback_server() as srv:
        yield srv


def _most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = most = 0
    for _, change in edges:
        open_now += change
        most = max(most, open_now)
    return most


def _items(run_id: str) -> list[StepItem]:
    return list(StepItem.objects.filter(step__run_id=run_id).order_by("index"))


def test_twenty_slow_items_run_four_at_a_time_across_two_workers(
    agent: Any, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> None:
    workers.extend([Worker(worker_logs, concurrency=2).start(), Worker(worker_logs, concurrency=2).start()])
    payload = {
        "pipeline": [
            {
                "id": "naps",
                "uses": "testing.sleep",
                "foreach": "${params.items}",
                "with": {"seconds": 0.5},
                "max_parallel": 4,
            },
            {"id": "count", "uses": "orchestrator.echo", "with": {"n": "${length(steps.naps)}"}},
        ],
        "params": {"items": list(range(20))},
    }
    run_id = start_manual_run(agent.client, payload)
    run = wait_for(lambda: finished(run_id), timeout=120, message="the fan-out run to finish")

    assert run.status == "succeeded", run.error
    assert run.result == {"n": 20}
    items = _items(run_id)
    assert [(i.index, i.status, i.attempts) for i in items] == [(n, "succeeded", 1) for n in range(20)]
    step = StepRun.objects.get(run_id=run_id, step_id="naps")
    assert step.output == [{"slept": 0.5}] * 20
    spans = [(i.started_at, i.finished_at) for i in items if i.started_at and i.finished_at]
    most = _most_at_once(spans)
    assert 2 <= most <= 4, f"{most} items ran at once; max_parallel is 4"
    by_worker = [w.processed().get("runs.run_item", 0) for w in workers]
    assert all(by_worker), f"items per worker: {by_worker}"
    assert sum(by_worker) == 20
    assert step.started_at
    assert step.finished_at
    wall_s = (step.finished_at - step.started_at).total_seconds()
    sequential_s = sum(i.duration_ms or 0 for i in items) / 1000
    print(
        f"\n[foreach] 20 items x 0.5 s, max_parallel 4, 2 workers x 2 processes: step took {wall_s:.2f} s, "
        f"the items' calls {sequential_s:.2f} s in sequence; ratio {wall_s / sequential_s:.2f} "
        f"(items at once: {most}; items per worker: {by_worker})"
    )


def test_an_item_that_fails_then_succeeds_on_retry(agent: Any, server: LoopbackServer, worker: Worker) -> None:
    server.script("/2", Reply(503), Reply(200, {"ok": True}))
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": [0, 1, 2, 3],
                "with": {"url": server.url("/") + "${item}"},
                "retry": {"max_attempts": 3, "backoff_seconds": 0.2},
                "max_parallel": 2,
            }
        ]
    }
    run_id = start_manual_run(agent.client, payload)
    run = wait_for(lambda: finished(run_id), timeout=60, message="the run to finish")

    assert run.status == "succeeded", run.error
    items = _items(run_id)
    assert [(i.status, i.attempts) for i in items] == [
        ("succeeded", 1),
        ("succeeded", 1),
        ("succeeded", 2),
        ("succeeded", 1),
    ]
    assert [h["outcome"] for h in items[2].attempt_history] == ["retry", "succeeded"]
    assert [server.count(f"/{n}") for n in range(4)] == [1, 1, 2, 1]
    detail = agent.client.get(f"/runs/{run_id}").json()
    fetch = next(s for s in detail["steps"] if s["id"] == "fetch")
    assert [item["attempts"] for item in fetch["items"]] == [1, 1, 2, 1]
    assert fetch["items"][2]["attempt_history"][0]["error"]["status"] == 503


def test_a_worker_killed_mid_fan_out_loses_no_item_and_repeats_only_those_in_flight(
    agent: Any, server: LoopbackServer, session_worker_paused: None, workers: list[Worker], worker_logs: Path
) -> None:
    count = 12
    for n in range(count):
        server.script(f"/{n}", Reply(200, {"n": n}, delay_s=1.0))
    env = {"ORDINAUT_RUNNING_GRACE_S": "1"}
    doomed = Worker(worker_logs, concurrency=2, env=env).start()
    survivor = Worker(worker_logs, concurrency=2, env=env).start()
    workers.extend([doomed, survivor])
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": list(range(count)),
                "with": {"url": server.url("/") + "${item}"},
                "timeout_seconds": 3,
                "max_parallel": 4,
            }
        ]
    }
    run_id = start_manual_run(agent.client, payload)

    def doomed_in_tool_calls() -> list[int]:
        """The items the doomed worker is running whose HTTP call the server has received."""
        active = app.control.inspect(destination=[doomed.name], timeout=1).active() or {}
        mine = [job["args"][2] for job in active.get(doomed.name, []) if job["name"] == ITEM_JOB_NAME]
        return sorted(n for n in mine if server.count(f"/{n}") >= 1)

    in_flight = wait_for(doomed_in_tool_calls, timeout=60, message="the doomed worker to be in an item's call")
    doomed.stop(signal.SIGKILL)

    def recovered_or_done() -> Any:
        runs_sweep()
        return finished(run_id)

    run = wait_for(recovered_or_done, timeout=120, message="the run to finish after the kill")

    assert run.status == "succeeded", run.error
    items = _items(run_id)
    assert [i.status for i in items] == ["succeeded"] * count, "no item lost"
    outputs = StepRun.objects.get(run_id=run_id, step_id="fetch").output or []
    assert [slot["json"] for slot in outputs] == [{"n": n} for n in range(count)], "in item order"
    calls = [server.count(f"/{n}") for n in range(count)]
    # At least once for the items in the dead worker's hands; exactly once for every other.
    assert [n for n, made in enumerate(calls) if made != 1] == in_flight, calls
    assert all(calls[n] == 2 for n in in_flight), calls
    for n in in_flight:
        assert items[n].attempts == 2
        assert [h["outcome"] for h in items[n].attempt_history] == ["lost", "succeeded"]
    print(
        f"\n[foreach] worker killed in the calls of items {in_flight}: {count} items succeeded, "
        f"{sum(calls)} calls in all (each of those twice, every other item once)"
    )


def test_cancel_mid_fan_out_stops_the_items_not_started(agent: Any, server: LoopbackServer, worker: Worker) -> None:
    count = 8
    for n in range(count):
        server.script(f"/{n}", Reply(200, {"n": n}, delay_s=1.0))
    payload = {
        "pipeline": [
            {
                "id": "fetch",
                "uses": "orchestrator.http",
                "foreach": list(range(count)),
                "with": {"url": server.url("/") + "${item}"},
                "max_parallel": 2,
            },
            {"id": "never", "uses": "orchestrator.echo"},
        ]
    }
    run_id = start_manual_run(agent.client, payload)
    wait_for(lambda: sum(server.count(f"/{n}") for n in range(count)) >= 2, message="two items in their calls")

    canceled = agent.client.post(f"/runs/{run_id}/cancel", format="json")

    assert canceled.status_code == 200, canceled.json()
    called_at_cancel = sum(server.count(f"/{n}") for n in range(count))
    worker.wait_idle()
    items = _items(run_id)
    done = [i.index for i in items if i.status == "succeeded"]
    skipped = [i for i in items if i.status == "skipped"]
    assert len(done) + len(skipped) == count
    assert {i.skip_reason for i in skipped} == {"canceled"}
    # An item a lane claimed just before the cancel committed may still make its call; no lane
    # starts another one after it.
    calls = sum(server.count(f"/{n}") for n in range(count))
    assert calls <= called_at_cancel + 2, f"{calls} calls; {called_at_cancel} had been made at the cancel"
    assert len(done) <= calls
    assert calls < count, "the items not started never ran"
    assert StepRun.objects.get(run_id=run_id, step_id="never").status == "pending"
    detail = agent.client.get(f"/runs/{run_id}").json()
    assert detail["status"] == "canceled"
