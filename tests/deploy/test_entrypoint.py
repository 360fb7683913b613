"""deploy/entrypoint.sh runs the Procfile's line for each role, and its `check` probes tell a running
process from a stopped one: real web, worker, beat and events processes started through it, on the
test database and Redis. `migrate` migrates a new database as its owner and creates the application
role that DATABASE_URL names, which then cannot touch the audit log."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from django.db import connection

from tests.deploy.files import BASE_DIR, ENTRYPOINT, procfile
from tests.support.processes import child_env, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

PROBE_TIMEOUT_S = 60


def _environment(**extra: str) -> dict[str, str]:
    # The Procfile's `python` is this interpreter's (as `make run` arranges through PATH); each test
    # gets its own queue, so its processes never take the session's jobs, and beat's keys (named
    # after the queue) are its own.
    # Their metrics ports are off: fixed ports would clash between two beats here, or with a
    # developer's `make run`.
    environment = child_env(
        CELERY_QUEUE=f"deploy-test-{uuid.uuid4().hex[:10]}",
        ORDINAUT_ENV_FILE="none",
        ORDINAUT_METRICS_PORT_WORKER="0",
        ORDINAUT_METRICS_PORT_BEAT="0",
        ORDINAUT_METRICS_PORT_EVENTS="0",
        **extra,
    )
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment.get('PATH', '')}"
    environment.pop("ORDINAUT_TRUSTED_PROXIES", None)
    return environment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def probe(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "check", *args],
        env=environment,
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT_S,
    )


def healthy(environment: dict[str, str], *args: str) -> bool:
    return probe(environment, *args).returncode == 0


class Started:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, handle: IO[bytes]) -> None:
        self.proc, self.log, self._handle = proc, log, handle

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._handle.close()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    started: list[Started] = []

    def run(role: str, environment: dict[str, str]) -> Started:
        log = tmp_path / f"{role}-{uuid.uuid4().hex[:6]}.log"
        handle = log.open("ab")
        proc = subprocess.Popen(
            [str(ENTRYPOINT), role],
            env=environment,
            cwd="/",  # the entrypoint finds the checkout itself
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(Started(proc, log, handle))
        return started[-1]

    yield run
    for process in started:
        process.stop()


def test_each_role_executes_its_procfile_line(tmp_path: Path) -> None:
    # A `python` that prints the arguments it was given: the entrypoint's command for each role is
    # the Procfile's line as a shell expands it, and the entrypoint's own process becomes it (exec).
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\necho "$$"; for a in "$@"; do printf "%s\\n" "$a"; done\n')
    (fake / "python").chmod(0o755)
    environment = {
        "PATH": f"{fake}:/usr/bin:/bin",
        "FLOWER_BASIC_AUTH": "admin:pw",
        "ORDINAUT_TRUSTED_PROXIES": "10.0.0.1",
    }
    for role, line in procfile().items():
        via_entrypoint = subprocess.Popen([str(ENTRYPOINT), role], env=environment, stdout=subprocess.PIPE, text=True)
        out, _ = via_entrypoint.communicate(timeout=30)
        assert via_entrypoint.returncode == 0, role
        direct = subprocess.run(
            ["sh", "-c", f"exec {line}"], env=environment, capture_output=True, text=True, check=True
        )
        pid, *argv = out.splitlines()
        assert argv == direct.stdout.splitlines()[1:], role
        assert int(pid) == via_entrypoint.pid, f"{role}: the entrypoint execs the command, it does not wrap it"
        assert argv[0] in ("-m", "manage.py"), role
    web = subprocess.run([str(ENTRYPOINT), "web"], env=environment, capture_output=True, text=True, check=True)
    assert "--forwarded-allow-ips=10.0.0.1" in web.stdout.splitlines()


def test_an_unknown_role_is_refused_with_the_usage() -> None:
    for role in ("nope", "web;id", "", "../x"):
        done = subprocess.run([str(ENTRYPOINT), role], capture_output=True, text=True)
        assert done.returncode == 64, role
        assert "usage:" in done.stderr
        assert "worker" in done.stderr


def test_web_through_the_entrypoint_answers_and_its_probes_say_so(start: Any) -> None:
    environment = _environment(ORDINAUT_HOST="127.0.0.1", ORDINAUT_PORT=str(_free_port()))
    assert not healthy(environment, "web"), "nothing listens yet"
    web = start("web", environment)
    wait_for(lambda: web.alive() and healthy(environment, "web"), timeout=60, message="web's ready probe")
    assert "healthy: 200" in probe(environment, "web", "live").stdout
    assert '"ready"' in probe(environment, "web").stdout
    web.stop()
    refused = probe(environment, "web")
    assert refused.returncode == 1
    assert refused.stdout.startswith("unhealthy:")


def test_web_probe_speaks_as_an_allowed_host_past_the_https_redirect(start: Any) -> None:
    environment = _environment(
        ORDINAUT_HOST="127.0.0.1",
        ORDINAUT_PORT=str(_free_port()),
        ALLOWED_HOSTS="ordinaut.example.com",
        SECURE_SSL="1",
    )
    web = start("web", environment)
    wait_for(lambda: web.alive() and healthy(environment, "web", "live"), timeout=60, message="web's live probe")
    assert healthy(environment, "web")


def test_a_worker_through_the_entrypoint_answers_its_probe(start: Any) -> None:
    environment = _environment()
    worker = start("worker", environment)
    wait_for(lambda: worker.alive() and healthy(environment, "worker"), timeout=90, message="the worker's probe")
    worker.stop()
    assert not healthy(environment, "worker")


def test_the_events_consumer_through_the_entrypoint_answers_its_probe(start: Any) -> None:
    environment = _environment(ORDINAUT_EVENT_STREAM=f"deploy-test-{uuid.uuid4().hex[:10]}:events")
    assert not healthy(environment, "events")
    events = start("events", environment)
    wait_for(lambda: events.alive() and healthy(environment, "events"), timeout=60, message="the consumer's probe")
    events.stop()
    said = probe(environment, "events")
    assert said.returncode == 1, "a consumer that stopped signs off"
    assert socket.gethostname() in said.stdout


def test_two_beats_through_the_entrypoint_tick_and_their_probe_says_so(start: Any) -> None:
    environment = _environment()
    silent = probe(environment, "beat")
    assert silent.returncode == 1
    assert "no beat heartbeat" in silent.stdout
    beats = [start("beat", environment), start("beat", environment)]
    wait_for(lambda: all(b.alive() for b in beats) and healthy(environment, "beat"), timeout=90, message="beat")
    leaders = [b for b in beats if "acquired the leader lock" in b.log.read_text()]
    assert len(leaders) == 1, "one beat leads, the other stands by"


def test_migrate_runs_as_the_owner_and_creates_the_application_role() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("database roles are PostgreSQL's")
    settings = connection.settings_dict
    host, port = settings.get("HOST") or "127.0.0.1", settings.get("PORT") or 5432
    suffix = uuid.uuid4().hex[:8]
    database, owner, app = f"ordinaut_deploy_{suffix}", f"ordinaut_owner_{suffix}", f"ordinaut_app_{suffix}"
    admin = psycopg.connect(
        host=host, port=port, dbname="postgres", user=settings["USER"] or "postgres", autocommit=True
    )
    try:
        # The owner creates the application role: it needs CREATEROLE (the postgres image's
        # POSTGRES_USER is a superuser, which has it).
        admin.execute(f'CREATE ROLE "{owner}" LOGIN CREATEROLE')
        admin.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
        environment = _environment(
            OWNER_DATABASE_URL=f"postgres://{owner}@{host}:{port}/{database}",
            DATABASE_URL=f"postgres://{app}:s3cret%2Fpw@{host}:{port}/{database}",
        )
        migrated = subprocess.run(
            [str(ENTRYPOINT), "migrate"], env=environment, capture_output=True, text=True, timeout=600
        )
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
        assert f"created role {app}" in migrated.stdout
        assert "s3cret" not in migrated.stdout + migrated.stderr

        role = admin.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NOT NULL FROM pg_authid WHERE rolname = %s",
            [app],
        ).fetchone()
        assert role == (False, False, False, True), "a plain login role, with the password DATABASE_URL gives"
        with psycopg.connect(host=host, port=port, dbname=database, user=owner) as as_owner:
            owned = as_owner.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = %s", [owner]
            ).fetchone()
            assert owned is not None
            assert owned[0] > 10, "the owner owns the tables"
        with psycopg.connect(host=host, port=port, dbname=database, user=app, autocommit=True) as as_app:
            assert as_app.execute("SELECT count(*) FROM ordinaut_auditlog").fetchone() is not None
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                as_app.execute("DELETE FROM ordinaut_auditlog")

        # The processes' init step: every migration is there, as the application role sees it.
        waited = subprocess.run(
            [str(ENTRYPOINT), "wait-migrated"], env=environment, capture_output=True, text=True, timeout=120
        )
        assert waited.returncode == 0, waited.stderr[-2000:]
        # Running it again (a redeploy) is harmless.
        again = subprocess.run(
            [str(ENTRYPOINT), "migrate"], env=environment, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert f"altered role {app}" in again.stdout
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{app}"')
        admin.execute(f'DROP ROLE IF EXISTS "{owner}"')
        admin.close()
