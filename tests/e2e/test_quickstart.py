"""The README's run command on the embedded SQLite default: the stack comes up, the curl flow works,
and stopping it stops every process it started."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.support.processes import BASE_DIR, wait_for

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _http(method: str, url: str, token: str | None = None, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback http only
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _up(url: str) -> bool:
    try:
        return _http("GET", url)[0] == 200
    except OSError:
        return False


def test_run_command_serves_the_curl_example_on_sqlite(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    port, flower_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SECRET_KEY", "DEBUG")}
    env.update(
        ORDINAUT_VAR_DIR=str(var_dir),
        ORDINAUT_PORT=str(port),
        FLOWER_PORT=str(flower_port),
        REDIS_URL=settings.REDIS_URL,
        CELERY_QUEUE=f"quickstart-{uuid.uuid4().hex[:8]}",
        WORKER_CONCURRENCY="1",
    )
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ordinaut_site.quickstart"],
            cwd=BASE_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: proc.poll() is not None or _up(f"{base}/health"),
            timeout=120,
            message="the web process to answer /health",
        )
        assert proc.poll() is None, log_path.read_text()
        output = log_path.read_text()
        token = (var_dir / "demo_token").read_text().strip()
        assert token in output, "the demo token is printed"
        assert (var_dir / "ordinaut.sqlite3").exists(), "SQLite is the default database"

        status, task = _http(
            "POST",
            f"{base}/tasks",
            token,
            {
                "title": "hello",
                "schedule_kind": "manual",
                "payload": {"pipeline": [{"id": "greet", "uses": "orchestrator.echo", "with": {"text": "hello"}}]},
            },
        )
        assert status == 201, task
        status, run = _http("POST", f"{base}/tasks/{task['id']}/run_now", token)
        assert status == 202, run

        def finished() -> Any:
            body = _http("GET", f"{base}/runs/{run['id']}", token)[1]
            return body if body["status"] in ("succeeded", "failed") else None

        body = wait_for(finished, timeout=60, message="the run to finish on the quick-start worker")
        assert body["status"] == "succeeded", body
        assert body["steps"][0]["output"] == {"text": "hello"}
        assert _up(f"{base}/health")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    children = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.strip()
    assert children == "", f"processes left behind: {children}\n{log_path.read_text()[-3000:]}"
