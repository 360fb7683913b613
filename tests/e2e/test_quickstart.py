"""The README's run command on the embedded SQLite default: the stack comes up, the curl flow works,
the README's commands for a second terminal work with nothing exported (they read the settings
file the quick start wrote), and stopping it stops every process it started. What it does about
Redis: use the one that answers (database 3 by default), start a private one, or say how to install
Redis and stop. And the banner in the README is the one it prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from ordinaut_site import envfile, quickstart
from tests.support.mcp_servers import http_server
from tests.support.processes import BASE_DIR, wait_for

pytestmark = pytest.mark.e2e

README = BASE_DIR / "README.md"
# What a new terminal lacks: everything the quick start was given or decided (and pytest's marker,
# which would make settings skip the file).
NOT_IN_A_NEW_TERMINAL = {
    "SECRET_KEY",
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "ORDINAUT_VAR_DIR",
    "CELERY_QUEUE",
    "TEST_DATABASE_NAME",
    "PYTEST_VERSION",
}
# The README's example values for what differs in this test: the web port, the demo token's file, an MCP server.
README_BASE = "http://127.0.0.1:8000"
README_TOKEN_FILE = "var/demo_token"
README_MCP_URL = "http://127.0.0.1:9000/mcp"


def readme_blocks(marker: str) -> list[str]:
    """The README's ```bash blocks that contain `marker`."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.S | re.M)
    found = [block for block in blocks if marker in block]
    assert found, f"no README bash block with {marker!r}"
    return found


def new_terminal(env_file: Path) -> dict[str, str]:
    """A second terminal's environment: none of the quick start's variables. ORDINAUT_ENV_FILE points
    at this test's settings file instead of the checkout's .env, which the test must not write."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_NEW_TERMINAL}
    env["ORDINAUT_ENV_FILE"] = str(env_file)
    return env


def run_in_terminal(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


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
    env_file = tmp_path / ".env"
    env.update(
        ORDINAUT_ENV_FILE=str(env_file),
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

        # What the quick start decided is in the settings file, private to its owner.
        saved = envfile.read(env_file)
        assert saved["REDIS_URL"] == settings.REDIS_URL
        assert saved["DATABASE_URL"] == f"sqlite:///{(var_dir / 'ordinaut.sqlite3').resolve()}"
        assert saved["SECRET_KEY"]
        assert saved["DEBUG"] == "0"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert f"Redis        {settings.REDIS_URL} (REDIS_URL of the environment)" in output
        assert f"Settings     {env_file} (every command run from this checkout reads it)" in output
        second_terminal(env_file, base, token, var_dir / "demo_token")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    children = subprocess.run(["pgrep", "-f", f"--port {port}"], capture_output=True, text=True).stdout.strip()
    assert children == "", f"processes left behind: {children}\n{log_path.read_text()[-3000:]}"


def second_terminal(env_file: Path, base: str, demo_token: str, token_file: Path) -> None:
    """The README's commands for another terminal, as written (but for the port, the token file and
    the MCP server's URL), with none of the quick start's variables exported."""
    env = new_terminal(env_file)
    assert not {"SECRET_KEY", "DEBUG", "DATABASE_URL", "REDIS_URL"} & set(env)

    def as_here(block: str, mcp_url: str = README_MCP_URL) -> str:
        return (
            block.replace(README_BASE, base)
            .replace(README_TOKEN_FILE, str(token_file))
            .replace(README_MCP_URL, mcp_url)
        )

    # The curl tour: its last command prints the run.
    (tour,) = readme_blocks("run_now")
    done = run_in_terminal(as_here(tour), env)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)

    def finished() -> Any:
        body = _http("GET", f"{base}/runs/{run['id']}", demo_token)[1]
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_for(finished, timeout=60, message="the README tour's run to finish")
    assert body["status"] == "succeeded", body
    assert [step["output"] for step in body["steps"]] == [{"text": "hello"}, {"n": 2}]

    # create_agent and add_tool_server: the stack's database, read from the settings file.
    (commands,) = readme_blocks("manage.py create_agent")
    lines = [line for line in commands.splitlines() if line.strip() and not line.startswith("#")]
    assert [line.split()[2] for line in lines] == ["create_agent", "add_tool_server"]
    with http_server() as mcp:
        for line in lines:
            done = run_in_terminal(as_here(line, mcp.url), env)
            assert done.returncode == 0, f"{line}\n{done.stderr[-3000:]}"
            if "create_agent" in line:
                new_token = done.stdout.strip().splitlines()[-1]
                status, tasks = _http("GET", f"{base}/tasks", new_token)
                assert status == 200, tasks
            else:
                assert "weather.forecast" in done.stdout
    status, servers = _http("GET", f"{base}/tool-servers", demo_token)
    assert status == 200, servers
    assert "weather" in [server["name"] for server in servers["results"]], servers

    # Without the settings file the same command fails as it did before it existed.
    done = run_in_terminal(lines[0].replace("reporter", "reporter-2"), {**env, "ORDINAUT_ENV_FILE": "none"})
    assert done.returncode != 0
    assert "SECRET_KEY is not set" in done.stderr


def test_the_readme_shows_the_banner_make_run_prints() -> None:
    banner = quickstart.render_banner(
        base=README_BASE,
        flower="http://127.0.0.1:5555",
        flower_user="admin",
        flower_password="<generated, kept in var/flower_password>",
        admin_password="<generated, kept in var/admin_password>",
        token="ord_xxxxxxxx_...",
        token_file=BASE_DIR / README_TOKEN_FILE,
        database_url=f"sqlite:///{BASE_DIR / 'var' / 'ordinaut.sqlite3'}",
        redis=quickstart.describe_redis(quickstart.DEFAULT_REDIS_URL, "use", "default"),
        env_file=BASE_DIR / ".env",
    )
    assert "```" + banner.rstrip("\n") + "\n```" in README.read_text()
    assert "redis://127.0.0.1:6379/3 (database 3: the quick start's own, not database 0)" in banner


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

    def start_private_redis(where: Path, **where_in_it: Any) -> Any:
        started.append(where)
        assert where_in_it == {}, "a new private Redis: on port 6390 or a free one"
        raise Started  # the rest of the stack is test_run_command_serves_the_curl_example_on_sqlite's

    monkeypatch.setattr(quickstart, "start_private_redis", start_private_redis)
    with pytest.raises(Started):
        quickstart.main()
    assert started == [var_dir.resolve()]


def test_the_default_redis_is_the_quick_starts_own_database() -> None:
    assert quickstart.DEFAULT_REDIS_URL.endswith(f"127.0.0.1:6379/{quickstart.QUICKSTART_REDIS_DB}")
    assert quickstart.QUICKSTART_REDIS_DB != 0


def test_plan_takes_the_settings_files_redis_url_after_the_environments(
    nothing_answers: str, path_with_redis_server: str, path_without_redis_server: str
) -> None:
    saved = {"REDIS_URL": settings.REDIS_URL}
    assert quickstart.redis_plan({}, saved=saved, default_url=nothing_answers) == ("use", settings.REDIS_URL)
    environ = {"REDIS_URL": nothing_answers, "PATH": path_with_redis_server}
    assert quickstart.redis_plan(environ, saved=saved) == ("install", nothing_answers)
    # A loopback URL in the file that nothing answers: the private Redis of an earlier run, started again.
    plan = quickstart.redis_plan({"PATH": path_with_redis_server}, saved={"REDIS_URL": nothing_answers})
    assert plan == ("start", nothing_answers)
    plan = quickstart.redis_plan({"PATH": path_without_redis_server}, saved={"REDIS_URL": nothing_answers})
    assert plan == ("install", nothing_answers)
    # Any other host the file names is the one to use: never replaced by a private Redis.
    remote = "redis://redis.invalid:6379/3"
    assert quickstart.redis_plan({"PATH": path_with_redis_server}, saved={"REDIS_URL": remote}) == ("install", remote)


def test_run_starts_the_private_redis_of_the_settings_file_at_its_port_again(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nothing_answers: str, path_with_redis_server: str
) -> None:
    var_dir = _quickstart_env(monkeypatch, tmp_path, nothing_answers, path_with_redis_server)
    saved_url = f"redis://127.0.0.1:{_free_port()}/5"
    env_file = tmp_path / ".env"
    env_file.write_text(f"REDIS_URL={saved_url}\n")
    monkeypatch.setenv("ORDINAUT_ENV_FILE", str(env_file))
    started: list[Any] = []

    class Started(Exception):
        pass

    def start_private_redis(where: Path, **where_in_it: Any) -> Any:
        started.append((where, where_in_it))
        raise Started

    monkeypatch.setattr(quickstart, "start_private_redis", start_private_redis)
    with pytest.raises(Started):
        quickstart.main()
    assert started == [(var_dir.resolve(), {"port": int(saved_url.split(":")[-1].split("/")[0]), "db": 5})]


def test_run_fills_in_only_what_the_settings_file_lacks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    var_dir = tmp_path / "var"
    env_file = tmp_path / ".env"
    edited = f"# my settings\nDEBUG=1\nREDIS_URL='{settings.REDIS_URL}'  # mine\nLOG_LEVEL=WARNING\n"
    env_file.write_text(edited)
    for name in ("REDIS_URL", "DATABASE_URL", "SECRET_KEY", "DEBUG", "LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ORDINAUT_VAR_DIR", str(var_dir))
    monkeypatch.setenv("ORDINAUT_ENV_FILE", str(env_file))
    seen: list[dict[str, str]] = []

    class Stop(Exception):
        pass

    def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
        seen.append(env)
        raise Stop

    monkeypatch.setattr(quickstart, "manage", manage)
    with pytest.raises(Stop):
        quickstart.main()
    text = env_file.read_text()
    assert text.startswith(edited), "the user's lines are kept as they are"
    saved = envfile.read(env_file)
    assert (saved["DEBUG"], saved["REDIS_URL"], saved["LOG_LEVEL"]) == ("1", settings.REDIS_URL, "WARNING")
    assert saved["SECRET_KEY"] == (var_dir / "secret_key").read_text().strip()
    assert saved["DATABASE_URL"] == f"sqlite:///{var_dir.resolve() / 'ordinaut.sqlite3'}"
    assert saved["ORDINAUT_VAR_DIR"] == str(var_dir.resolve())
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # The stack runs with the file's values, and the environment wins over them (and is said to).
    assert {key: seen[0][key] for key in ("DEBUG", "REDIS_URL", "LOG_LEVEL")} == {
        "DEBUG": "1",
        "REDIS_URL": settings.REDIS_URL,
        "LOG_LEVEL": "WARNING",
    }
    monkeypatch.setenv("DEBUG", "0")
    with pytest.raises(Stop):
        quickstart.main()
    assert seen[1]["DEBUG"] == "0"
    assert envfile.read(env_file) == saved, "a second run adds nothing and changes nothing"
    assert "DEBUG of the environment overrides" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed here")
def test_the_private_redis_answers_on_a_free_port_with_its_data_under_var(tmp_path: Path) -> None:
    proc, url = quickstart.start_private_redis(tmp_path)
    try:
        assert quickstart.redis_answers(url)
        assert url.endswith(f"/{quickstart.QUICKSTART_REDIS_DB}"), url
        assert (tmp_path / "redis" / "redis.log").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
