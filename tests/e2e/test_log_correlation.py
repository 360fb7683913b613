"""One run's log lines followed across processes, in JSON as deployed: the web line that created it,
the events consumer's line that delivered its event, and every line of its jobs on a worker (the
engine's and Celery's own) carry the run id and the request id (and agent) of the API call that
started it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest

from runs.models import Run, StepRun
from tests.support.pipelines import finished, manual_task_body
from tests.support.processes import ConsumerProcess, Web, Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

JSON_LOGS = {"LOG_FORMAT": "json", "ORDINAUT_RATE_LIMIT": "off", "ORDINAUT_WRITE_RATE_LIMIT": "off"}
PIPELINE = [
    {"id": "first", "uses": "orchestrator.echo", "with": {"n": 1}},
    {"id": "probe", "uses": "testing.log_context"},
    {"id": "last", "uses": "orchestrator.echo", "with": {"n": 3}},
]


def _lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process's log (anything else, e.g. Celery's banner, left out)."""
    lines = []
    for text in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def _of_run(lines: list[dict[str, Any]], run_id: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("run") == run_id]


def _post(web: Web, token: str, path: str, body: Any, request_id: str) -> Any:
    headers = {"Authorization": f"Bearer {token}", "X-Request-ID": request_id}
    response = httpx2.post(web.base + path, json=body, headers=headers, timeout=30)
    assert response.status_code < 300, response.text
    return response.json()


def test_a_manual_runs_lines_carry_its_request_across_web_and_worker(
    agent: Any, session_worker_paused: None, workers: list[Worker], worker_logs: Path, tmp_path: Path
) -> None:
    worker = Worker(worker_logs, env=JSON_LOGS).start()
    workers.append(worker)
    web = Web(tmp_path, env=JSON_LOGS).start()
    try:
        task = _post(
            web, agent.token, "/tasks", manual_task_body({"pipeline": PIPELINE}), f"create-{uuid.uuid4().hex[:8]}"
        )
        request_id = f"start-{uuid.uuid4().hex[:8]}"
        run_id = str(_post(web, agent.token, f"/tasks/{task['id']}/run_now", {}, request_id)["id"])
        run = wait_for(lambda: finished(run_id), message="the run to finish")
        assert run.status == "succeeded", run.error
        worker.wait_idle()
    finally:
        web.stop()

    created = _of_run(_lines(web.log_path), run_id)
    assert created, "the web process logged the run's creation"
    assert {(line["request_id"], line["agent"]) for line in created} == {(request_id, agent.agent.name)}

    on_worker = _of_run(_lines(worker.log_path), run_id)
    assert on_worker, "the worker's lines name the run"
    assert {line["request_id"] for line in on_worker} == {request_id}
    assert {line["agent"] for line in on_worker} == {agent.agent.name}
    # Celery's own line for each of the run's step jobs: one per step, each with the run and request.
    succeeded = [line for line in on_worker if "succeeded in" in line["message"]]
    assert len(succeeded) == len(PIPELINE), [line["message"] for line in on_worker]
    # What the step itself saw as its context, recorded as its output.
    probe = StepRun.objects.get(run_id=run_id, step_id="probe").output
    assert probe == {"request_id": request_id, "run": run_id, "step": "1"}


def test_an_event_runs_lines_carry_the_publishing_request_through_the_consumer(
    agent: Any, session_worker_paused: None, workers: list[Worker], worker_logs: Path, tmp_path: Path
) -> None:
    worker = Worker(worker_logs, env=JSON_LOGS).start()
    workers.append(worker)
    topic = f"correlate.{uuid.uuid4().hex[:8]}"
    body = {
        "title": "on event",
        "schedule_kind": "event",
        "schedule_expr": topic,
        "payload": {"pipeline": PIPELINE},
    }
    created = agent.client.post("/tasks", body, format="json")
    assert created.status_code == 201, created.json()
    consumer = ConsumerProcess(tmp_path / "consumer.log", env=JSON_LOGS, name=f"corr-{uuid.uuid4().hex[:6]}")
    web = Web(tmp_path, env=JSON_LOGS).start()
    try:
        request_id = f"publish-{uuid.uuid4().hex[:8]}"
        _post(web, agent.token, "/events", {"topic": topic, "payload": {"n": 1}}, request_id)
        runs = Run.objects.filter(task_id=created.json()["id"], status__in=Run.TERMINAL)
        run = wait_for(runs.first, timeout=60, message="the event's run to finish")
        assert run.status == "succeeded", run.error
        worker.wait_idle()
    finally:
        web.stop()
        consumer.stop()
    run_id = str(run.pk)

    delivered = [line for line in _lines(consumer.log_path) if "run(s) created" in line.get("message", "")]
    assert delivered, consumer.log()[-2000:]
    assert {line["request_id"] for line in delivered} == {request_id}
    on_worker = _of_run(_lines(worker.log_path), run_id)
    assert len([line for line in on_worker if "succeeded in" in line["message"]]) == len(PIPELINE)
    assert {line["request_id"] for line in on_worker} == {request_id}
    assert {line["agent"] for line in on_worker} == {agent.agent.name}
