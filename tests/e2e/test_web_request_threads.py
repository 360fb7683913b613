"""The web under the ASGI server runs requests' synchronous code on REQUEST_THREADS long-lived threads
(ordinaut_site/middleware.py): concurrent requests through the real uvicorn process re-use a bounded
number of PostgreSQL connections, where a thread per request used to open one each and keep it
(DB_CONN_MAX_AGE) until the thread was collected."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from django.db import connection

from ordinaut_site.middleware import REQUEST_THREADS
from tests.support.processes import BASE_DIR, child_env, free_port, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

REQUESTS = 120
# The web process's connections name themselves (libpq reads PGAPPNAME), so the session's worker
# and other processes on the test database are not counted.
APP_NAME = f"web-threads-{uuid.uuid4().hex[:8]}"


def web_connections() -> int:
    """The web process's connections to the test database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [APP_NAME],
        )
        return int(cursor.fetchone()[0])


@pytest.fixture
def web(tmp_path: Path) -> Any:
    port = free_port()
    log = (tmp_path / f"web-{uuid.uuid4().hex[:6]}.log").open("ab")
    command = [sys.executable, "-m", "uvicorn", "ordinaut_site.asgi:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "on", "--no-access-log"]
    environment = child_env(ORDINAUT_RATE_LIMIT="off", PGAPPNAME=APP_NAME)
    proc = subprocess.Popen(command, env=environment, cwd=BASE_DIR, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, f"web exited with {proc.returncode}; log {log.name}"
        try:
            return httpx2.get(f"{base}/health/live", timeout=2).status_code == 200
        except httpx2.TransportError:
            return False

    wait_for(up, timeout=60, message="the web process to answer")
    yield base
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()


def test_concurrent_requests_share_a_bounded_number_of_connections(web: str, agent: Any) -> None:
    headers = {"Authorization": f"Bearer {agent.token}"}

    def one(n: int) -> tuple[int, str]:
        with httpx2.Client(base_url=web, headers=headers, timeout=30) as client:
            response = client.get("/tasks", params={"limit": 1}, headers={"X-Request-ID": f"req-{n}"})
            return response.status_code, response.headers.get("X-Request-ID", "")

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(REQUESTS)))

    assert answers == [(200, f"req-{n}") for n in range(REQUESTS)]
    assert 1 <= web_connections() <= REQUEST_THREADS
