"""The stack the metrics and alert-rule tests scrape: a real web (uvicorn), worker, beat and events
consumer on a queue, an event stream and metrics ports of their own, put through one scenario
(runs that succeed and fail, a schedule fire, an event, an approval, a budget and a rate limit
spent) once for the package."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from prometheus_client.parser import text_string_to_metric_families

from ordinaut_site.audit import Actor
from ordinaut_site.models import ALL_SCOPES, Agent
from ordinaut_site.services import agent_create, token_issue
from ordinaut_site.throttling import THROTTLE_KEY_PREFIX
from runs.models import Run
from tests.support.processes import BASE_DIR, Beat, Worker, child_env, wait_for

# The web child keeps the default cache prefix, shared by every suite on this Redis: its window
# counters are emptied before the requests.
ANON_RATE_LIMIT = "3/hour"
THROTTLE_KEYS = f"ordinaut:*:{THROTTLE_KEY_PREFIX}:all:ip:*"
TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Process:
    """A command of the stack in a subprocess of its own session, logging to a file."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, env=env, cwd=BASE_DIR, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=20)

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}; log: {self.log_path}")
        return True


Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples:
    """The samples of a /metrics page over HTTP, by sample name."""
    response = httpx2.get(url, timeout=10)
    assert response.status_code == 200, response.text[:500]
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return found


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(value for have, value in samples.get(name, []) if all(have.get(k) == v for k, v in labels.items()))


@dataclass
class Stack:
    queue: str
    stream: str
    web_url: str
    ports: dict[str, int]
    token: str = ""
    budget_token: str = ""
    runs: dict[str, str] = field(default_factory=dict)
    # The web's scrape while the approval was pending (after the runs, it is decided).
    while_waiting: Samples = field(default_factory=dict)

    def metrics_url(self, role: str) -> str:
        if role == "web":
            return f"{self.web_url}/metrics"
        return f"http://127.0.0.1:{self.ports[role]}/metrics"

    def scrape(self, role: str) -> Samples:
        return scrape(self.metrics_url(role))

    def api(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"} if token != "" else {}
        return httpx2.request(method, f"{self.web_url}{path}", headers=headers, timeout=30, **kwargs)


def _agent(name: str, **fields: Any) -> str:
    actor = Actor.system("tests")
    agent = agent_create(name=name, scopes=[s for s in ALL_SCOPES if s != "admin"], actor=actor)
    if fields:
        Agent.objects.filter(pk=agent.pk).update(**fields)
    return token_issue(agent=agent, actor=actor)[1]


def _run_of(task_id: str) -> Run | None:
    return Run.objects.filter(task_id=task_id).first()


def _terminal(run_id: str) -> Run | None:
    run = Run.objects.filter(pk=run_id).first()
    return run if run is not None and run.status in Run.TERMINAL else None


def _task(stack: Stack, body: dict[str, Any], token: str | None = None) -> str:
    created = stack.api("POST", "/tasks", token=token, json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _run_now(stack: Stack, pipeline: list[dict[str, Any]], token: str | None = None) -> str:
    task_id = _task(stack, {"title": "ops", "schedule_kind": "manual", "payload": {"pipeline": pipeline}}, token)
    started = stack.api("POST", f"/tasks/{task_id}/run_now", token=token)
    assert started.status_code == 202, started.text
    return str(started.json()["id"])


def _scenario(stack: Stack) -> None:
    echo: list[dict[str, Any]] = [
        {"id": "a", "uses": "orchestrator.echo", "with": {"x": 1}},
        {"id": "b", "uses": "orchestrator.echo"},
    ]
    stack.runs["ok"] = _run_now(stack, echo)
    stack.runs["bug"] = _run_now(stack, [{"id": "a", "uses": "testing.bug"}])
    stack.runs["refused"] = _run_now(
        stack, [{"id": "a", "uses": "orchestrator.http", "with": {"url": "http://not-allowed.invalid/"}}]
    )
    # One metered call a day: the second is refused by the budget.
    forecast = {"uses": "weather-mcp.forecast", "with": {"city": "Oslo"}}
    stack.runs["budget"] = _run_now(stack, [{"id": "a", **forecast}, {"id": "b", **forecast}], stack.budget_token)
    # A schedule: once, a few seconds from now, fired by beat.
    at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
    once = _task(stack, {"title": "once", "schedule_kind": "once", "schedule_expr": at, "payload": {"pipeline": echo}})
    # An event, published through the web, delivered by the consumer.
    on_event = _task(
        stack, {"title": "on", "schedule_kind": "event", "schedule_expr": "ops.*", "payload": {"pipeline": echo}}
    )
    published = stack.api("POST", "/events", json={"topic": "ops.metrics", "payload": {"n": 1}})
    assert published.status_code == 202, published.text
    # An approval, pending while the web is scraped once.
    ask = {"id": "ask", "uses": "orchestrator.request_approval", "with": {"message": "ok?"}}
    stack.runs["approval"] = _run_now(stack, [ask, {"id": "after", "uses": "orchestrator.echo"}])
    wait_for(
        lambda: Run.objects.filter(pk=stack.runs["approval"], status=Run.Status.WAITING_APPROVAL).exists(),
        timeout=TIMEOUT_S,
        message="the run to wait for its approval",
    )
    stack.while_waiting = stack.scrape("web")
    decided = stack.api("POST", f"/runs/{stack.runs['approval']}/approve", json={})
    assert decided.status_code == 200, decided.text
    # The anonymous rate limit (3/hour on this web): 401, 401, 401, then 429.
    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=THROTTLE_KEYS):
        client.delete(key)
    client.close()
    for _ in range(5):
        stack.api("GET", "/tasks", token="")
    stack.runs["schedule"] = str(wait_for(lambda: _run_of(once), timeout=TIMEOUT_S, message="beat to fire").pk)
    stack.runs["event"] = str(wait_for(lambda: _run_of(on_event), timeout=TIMEOUT_S, message="the event's run").pk)
    for name, run_id in stack.runs.items():
        wait_for(partial(_terminal, run_id), timeout=TIMEOUT_S, message=f"the {name} run to finish")


@pytest.fixture(scope="package")
def stack(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    log_dir = tmp_path_factory.mktemp("ops-stack")
    queue = f"ordinaut-ops-{uuid.uuid4().hex[:8]}"
    stream = f"{settings.ORDINAUT_EVENT_STREAM}-ops-{uuid.uuid4().hex[:6]}"
    ports = {role: free_port() for role in ("web", "worker", "beat", "events")}
    env = {
        "CELERY_QUEUE": queue,
        "ORDINAUT_EVENT_STREAM": stream,
        "ORDINAUT_METRICS_HOST": "127.0.0.1",
        "ORDINAUT_METRICS_PORT_WORKER": str(ports["worker"]),
        "ORDINAUT_METRICS_PORT_BEAT": str(ports["beat"]),
        "ORDINAUT_METRICS_PORT_EVENTS": str(ports["events"]),
        "ORDINAUT_ANON_RATE_LIMIT": ANON_RATE_LIMIT,
    }
    stack = Stack(queue=queue, stream=stream, web_url=f"http://127.0.0.1:{ports['web']}", ports=ports)
    started: list[Any] = []
    with django_db_blocker.unblock():
        try:
            worker_env = {name: value for name, value in env.items() if name != "CELERY_QUEUE"}
            started.append(Worker(log_dir, queue=queue, env=worker_env).start())
            started.append(Beat(log_dir, "ops", env=env).start())
            uvicorn = [sys.executable, "-m", "uvicorn", "ordinaut_site.asgi:application", "--port", str(ports["web"])]
            web = Process("web", [*uvicorn, "--host", "127.0.0.1", "--lifespan", "on"], child_env(**env), log_dir)
            started.append(web)
            consumer = Process("events", [sys.executable, "manage.py", "consume_events"], child_env(**env), log_dir)
            started.append(consumer)
            for role in ("web", "worker", "beat", "events"):
                url = stack.metrics_url(role)
                wait_for(
                    partial(_answers, url, web, consumer), timeout=60, message=f"{url} to answer (logs in {log_dir})"
                )
            stack.token = _agent(f"ops-{uuid.uuid4().hex[:6]}")
            stack.budget_token = _agent(f"ops-budget-{uuid.uuid4().hex[:6]}", tool_calls_per_day=1)
            _scenario(stack)
            started[0].wait_idle()
            yield stack
        finally:
            for proc in reversed(started):
                proc.stop()
            client = redis.Redis.from_url(settings.REDIS_URL)
            keys = [*client.scan_iter(match=f"{stream}*"), *client.scan_iter(match=f"{queue}*")]
            if keys:
                client.delete(*keys)
            client.close()
            # Leave the database as transactional tests do.
            call_command("flush", interactive=False, verbosity=0)


def _answers(url: str, *processes: Process) -> bool:
    for process in processes:
        process.alive()
    try:
        return httpx2.get(url, timeout=2).status_code == 200
    except httpx2.TransportError:
        time.sleep(0.2)
        return False
