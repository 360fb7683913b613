"""The README's run command on the embedded SQLite default: the stack comes up, the curl flow works,
and stopping it stops every process it started. And what it does about Redis: use the one that
answers, start a private one, or say how to install Redis and stop."""

from __future__ import annotations

import json
import os
import shutil
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

from ordinaut_site import quickstart
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


@pytest.fixture
def nothing_answers() -> str:
    """A Redis URL on a free loopback port: what an unset REDIS_URL finds when no Redis is installed."""
    return f"redis://127.0.0.1:{_free_port()}/0"


@pytest.fixture
def path_with_redis_server(tmp_path: Path) -> str:
    """A PATH on which `redis-server` is installed (a stand-in; the plan only looks for it)."""
    bin_dir = tmp_path / "bin-with-redis"
    bin_dir.mkdir()
    fake = bin_dir / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    return str(bin_dir)


@pytest.fixture
def path_without_redis_server(tmp_path: Path) -> str:
    bin_dir = tmp_path / "bin-without-redis"
    bin_dir.mkdir()
    return str(bin_dir)


def test_plan_uses_the_redis_that_answers() -> None:
    assert quickstart.redis_plan({"REDIS_URL": settings.REDIS_URL}) == ("use", settings.REDIS_URL)
    assert quickstart.redis_plan({}, default_url=settings.REDIS_URL) == ("use", settings.REDIS_URL)


def test_plan_starts_a_private_redis_when_redis_url_is_unset_and_nothing_answers(
    nothing_answers: str, path_with_redis_server: str
) -> None:
    plan = quickstart.redis_plan({"PATH": path_with_redis_server}, default_url=nothing_answers)
    assert plan == ("start", nothing_answers)


def test_plan_never_replaces_an_explicit_redis_url(nothing_answers: str, path_with_redis_server: str) -> None:
    environ = {"PATH": path_with_redis_server, "REDIS_URL": nothing_answers}
    assert quickstart.redis_plan(environ) == ("install", nothing_answers)


def test_plan_without_redis_server_says_install(nothing_answers: str, path_without_redis_server: str) -> None:
    plan = quickstart.redis_plan({"PATH": path_without_redis_server}, default_url=nothing_answers)
    assert plan == ("install", nothing_answers)


def _quickstart_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nothing_answers: str, path: str) -> Path:
    var_dir = tmp_path / "var"
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("ORDINAUT_VAR_DIR", str(var_dir))
    monkeypatch.setattr(quickstart, "DEFAULT_REDIS_URL", nothing_answers)
    return var_dir


def test_run_without_redis_server_explains_how_to_install_redis_and_fails(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    nothing_answers: str,
    path_without_redis_server: str,
) -> None:
    var_dir = _quickstart_env(monkeypatch, tmp_path, nothing_answers, path_without_redis_server)
    assert quickstart.main() == 2
    err = capsys.readouterr().err
    assert f"none answers at {nothing_answers}" in err
    assert "sudo apt-get install redis-server" in err
    assert "REDIS_URL" in err
    assert not (var_dir / "redis").exists(), "no private Redis was started"
    assert not (var_dir / "ordinaut.sqlite3").exists(), "nothing else was set up"


def test_run_starts_the_private_redis_when_nothing_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nothing_answers: str, path_with_redis_server: str
) -> None:
    var_dir = _quickstart_env(monkeypatch, tmp_path, nothing_answers, path_with_redis_server)
    started: list[Path] = []

    class Started(Exception):
        pass

    def start_private_redis(where: Path) -> Any:
        started.append(where)
        raise Started  # the rest of the stack is test_run_command_serves_the_curl_example_on_sqlite's

    monkeypatch.setattr(quickstart, "start_private_redis", start_private_redis)
    with pytest.raises(Started):
        quickstart.main()
    assert started == [var_dir.resolve()]


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed here")
def test_the_private_redis_answers_on_a_free_port_with_its_data_under_var(tmp_path: Path) -> None:
    proc, url = quickstart.start_private_redis(tmp_path)
    try:
        assert quickstart.redis_answers(url)
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
