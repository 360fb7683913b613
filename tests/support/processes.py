"""Real processes for tests: Celery workers, beat and the Procfile's web, as subprocesses on the test database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import redis
from django.db import connection

from ordinaut_site.celery import app
from ordinaut_site.queues import worker_queues

BASE_DIR = Path(__file__).resolve().parents[2]
POLL_S = 0.05


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, message: str = "condition") -> Any:
    """Poll until predicate() is truthy; fail the test with `message` after timeout seconds.
    This bounds a hang, it does not assert speed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(POLL_S)


def database_url_for_children() -> str:
    """URL of the database the tests run on (pytest-django's test database), for subprocesses."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    auth = quote(s.get("USER") or "")
    if s.get("PASSWORD"):
        auth += ":" + quote(s["PASSWORD"])
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{s['NAME']}"


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url_for_children(),
        CELERY_QUEUE=app.conf.task_default_queue,
        PYTHONUNBUFFERED="1",
        LOG_FORMAT="text",
    )
    env.update(extra)
    return env


class _CeleryProcess:
    """`celery -A ordinaut_site <command>` in a subprocess of its own session, logging to a file."""

    log_path: Path

    def __init__(self, env: dict[str, str] | None) -> None:
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _spawn(self, *args: str, env: dict[str, str]) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ordinaut_site", *args],
            env=env,
            cwd=BASE_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Worker(_CeleryProcess):
    """`celery -A ordinaut_site worker` in a subprocess, consuming this test session's queue."""

    def __init__(
        self,
        log_dir: Path,
        *,
        concurrency: int = 2,
        name: str | None = None,
        queue: str | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(env)
        self.name = name or f"test-{uuid.uuid4().hex[:8]}@{os.uname().nodename}"
        self.log_path = log_dir / f"{self.name.split('@')[0]}.log"
        self.concurrency = concurrency
        # Another queue than the session's keeps this worker's messages away from the shared worker.
        self.queue = queue or app.conf.task_default_queue
        self.extra_args = extra_args

    def start(self) -> Worker:
        self._spawn(
            "worker",
            "-P",
            "prefork",
            "-c",
            str(self.concurrency),
            "-n",
            self.name,
            "-Q",
            worker_queues(self.queue),
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
            *self.extra_args,
            env=child_env(CELERY_QUEUE=self.queue, **self.env),
        )
        wait_for(self.ping, timeout=60, message=f"worker {self.name} to answer ping (log: {self.log_path})")
        return self

    def ping(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}; log: {self.log_path}")
        return bool(app.control.ping(destination=[self.name], timeout=0.5))

    def processed(self) -> dict[str, int]:
        """Jobs this worker has run so far, by job name (Celery's own counter)."""
        stats: dict[str, Any] = app.control.inspect(destination=[self.name], timeout=2).stats() or {}
        return dict(stats.get(self.name, {}).get("total", {}))

    def wait_idle(self, timeout: float = 60) -> None:
        """Until this worker's queues are empty and it runs nothing: a test that sent jobs waits
        here before its teardown empties the database under a job's open transaction."""
        client = redis.Redis.from_url(app.conf.broker_url)
        queues = worker_queues(self.queue).split(",")

        def idle() -> bool:
            if any(client.llen(name) for name in queues):
                return False
            inspect = app.control.inspect(destination=[self.name], timeout=1)
            busy = [*(inspect.active() or {}).get(self.name, []), *(inspect.reserved() or {}).get(self.name, [])]
            return not busy

        wait_for(idle, timeout=timeout, message=f"worker {self.name} to finish its jobs")


class Beat(_CeleryProcess):
    """`celery -A ordinaut_site beat` in a subprocess (Ordinaut's scheduler, as settings select)."""

    def __init__(
        self, log_dir: Path, name: str, *, args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        super().__init__(env)
        self.name = name
        self.args = args
        self.log_path = log_dir / f"beat-{name}-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> Beat:
        self._spawn("beat", "-l", "INFO", "--pidfile=", *self.args, env=child_env(**self.env))
        return self

    def is_leader(self) -> bool:
        return "acquired the leader lock" in self.log_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def procfile_command(role: str) -> str:
    """The Procfile's command line for a role (web, worker, beat, events, flower)."""
    prefix = f"{role}:"
    line = next(line for line in (BASE_DIR / "deploy" / "Procfile").read_text().splitlines() if line.startswith(prefix))
    return line.removeprefix(prefix).strip()


class Web(_CeleryProcess):
    """The Procfile's web process (uvicorn, as deployed) on a free loopback port, on the test database."""

    def __init__(self, log_dir: Path, *, env: dict[str, str] | None = None) -> None:
        super().__init__(env)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"web-{uuid.uuid4().hex[:6]}.log"

    def start(self) -> Web:
        environment = child_env(ORDINAUT_HOST="127.0.0.1", ORDINAUT_PORT=str(self.port), **self.env)
        if "ORDINAUT_TRUSTED_PROXIES" not in self.env:
            environment.pop("ORDINAUT_TRUSTED_PROXIES", None)
        # The Procfile's `python` is this interpreter's, as `make run` arranges through PATH.
        environment["PATH"] = f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {procfile_command('web')}"],
            env=environment,
            cwd=BASE_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.up, timeout=60, message=f"the Procfile's web process to answer (log: {self.log_path})")
        return self

    def up(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"web exited with {self.proc.returncode}; log: {self.log_path}"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        return True


class ConsumerProcess:
    """`manage.py consume_events` in a subprocess on the test database and stream."""

    def __init__(self, log_path: Path, *, env: dict[str, str] | None = None, name: str = "e2e-consumer") -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "consume_events", "--name", name],
            cwd=BASE_DIR,
            env=child_env(**(env or {})),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()
