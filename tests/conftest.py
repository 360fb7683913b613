"""Shared fixtures: agents with tokens and API clients, and a real Celery worker subprocess."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor
from ordinaut_site.celery import app
from ordinaut_site.models import ALL_SCOPES, Agent
from ordinaut_site.queues import queue_config
from ordinaut_site.services import agent_create, token_issue
from ordinaut_site.throttling import THROTTLE_KEY_PREFIX
from tests.support import flush
from tests.support.mcp_servers import TOKEN, TOKEN_ENV
from tests.support.processes import Worker

# Fixtures of engine tests that start workers of their own (session_worker_paused, workers).
pytest_plugins = ["tests.support.engine_fixtures"]

TEST_TOOL_SETTINGS = {
    "ORDINAUT_TOOL_MODULES": ["tests.support.tools"],
    "ORDINAUT_HTTP_ALLOWED_HOSTS": ["127.0.0.1"],
    # The test MCP servers and HTTP targets listen on loopback (tests/pipelines/test_netpolicy.py
    # empties it to show refusals).
    "ORDINAUT_ALLOWED_PRIVATE_NETWORKS": ["127.0.0.0/8"],
}


def pytest_configure(config: pytest.Config) -> None:
    # Each test session gets its own queue, so two suites sharing a Redis never eat each
    # other's messages. Set before anything publishes (app.amqp builds queues lazily).
    for name, value in queue_config(f"ordinaut-test-{uuid.uuid4().hex[:10]}").items():
        setattr(app.conf, name, value)
    # Test doubles of the seed's tools, and orchestrator.http and tool servers allowed to reach
    # loopback test servers: in this process (settings) and in worker subprocesses (they inherit os.environ).
    for name, value in TEST_TOOL_SETTINGS.items():
        os.environ[name] = ",".join(value)
        setattr(settings, name, value)
    # The protected test MCP server's Authorization header, where tool servers' headers_from_env
    # finds it (tests/support/mcp_servers.py); worker subprocesses inherit it.
    os.environ[TOKEN_ENV] = f"Bearer {TOKEN}"
    # And its own event stream (here and in subprocesses: workers emit events, consumers read them).
    stream = f"ordinaut-test-{uuid.uuid4().hex[:10]}:events"
    os.environ["ORDINAUT_EVENT_STREAM"] = settings.ORDINAUT_EVENT_STREAM = stream
    # And its own PostgreSQL test database (unless TEST_DATABASE_NAME names one), so two suites on
    # one server (a CI clone beside a checkout) never drop each other's.
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("postgresql") and not database.get("TEST", {}).get("NAME"):
        database.setdefault("TEST", {})["NAME"] = f"test_{database['NAME']}_{uuid.uuid4().hex[:8]}"
    if database["ENGINE"].endswith("postgresql"):
        # Transactional tests empty every table with TRUNCATE between tests; the audit log refuses
        # TRUNCATE unless its owner's session says so (ordinaut_site/migrations/0006).
        options = database.setdefault("OPTIONS", {})
        options["options"] = f"{options.get('options', '')} -c ordinaut.audit_truncate=allow".strip()
    # And its own cache key prefix: rate-limit counters (the cache's only use) of two suites on one
    # Redis would add up, and rate_limits_reset of one would wipe the other's mid-test.
    settings.CACHES["default"]["KEY_PREFIX"] = f"ordinaut-test-{uuid.uuid4().hex[:10]}"
    # The session worker may finish a test's last step while the test's flush runs: a deadlock
    # there is retried (tests/support/flush.py).
    flush.install()


@dataclass
class AgentHandle:
    agent: Agent
    token: str
    client: APIClient


@pytest.fixture
def make_agent(db: Any) -> Any:
    """make_agent(name=None, scopes=ALL_SCOPES minus admin, admin=False) -> AgentHandle."""

    def make(name: str | None = None, scopes: list[str] | None = None, admin: bool = False) -> AgentHandle:
        actor = Actor.system("tests")
        if scopes is None:
            scopes = [s for s in ALL_SCOPES if s != "admin"]
        agent = agent_create(name=name or f"agent-{uuid.uuid4().hex[:8]}", scopes=scopes, admin=admin, actor=actor)
        _, raw = token_issue(agent=agent, actor=actor)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return AgentHandle(agent, raw, client)

    return make


@pytest.fixture
def agent(make_agent: Any) -> AgentHandle:
    return make_agent()


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session", autouse=True)
def event_stream_cleanup(redis_client: redis.Redis) -> Iterator[None]:
    """The session's event stream and its consumers' heartbeats go when the session ends."""
    yield
    redis_client.delete(settings.ORDINAUT_EVENT_STREAM, f"{settings.ORDINAUT_EVENT_STREAM}:consumers")


@pytest.fixture(autouse=True)
def rate_limits_reset(redis_client: redis.Redis) -> None:
    """Rate-limit counters live in Redis across tests and sessions: every test starts with none."""
    pattern = f"{settings.CACHES['default']['KEY_PREFIX']}:*:{THROTTLE_KEY_PREFIX}:*"
    keys = list(redis_client.scan_iter(match=pattern, count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture(scope="session")
def worker_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-logs")


@pytest.fixture(scope="session")
def worker(django_db_setup: Any, django_db_blocker: Any, worker_logs: Path) -> Iterator[Worker]:
    """One real Celery worker (prefork, 2 processes) for the session, on the test database."""
    with django_db_blocker.unblock():
        proc = Worker(worker_logs).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_task(agent: AgentHandle) -> Any:
    """make_task(kind, expr, tz, **fields) -> Task, created through the service like the API does."""
    from tasks.models import Task
    from tasks.services import task_create

    def make(kind: str = "cron", expr: str = "0 9 * * *", tz: str = "UTC", **fields: Any) -> Task:
        payload = fields.pop("payload", {"pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {}}]})
        return task_create(
            owner=agent.agent,
            actor=Actor.system("tests"),
            fields={
                "title": fields.pop("title", "t"),
                "schedule_kind": kind,
                "schedule_expr": expr,
                "timezone": tz,
                "payload": payload,
                **fields,
            },
        )

    return make
