"""`make run`: prepare a single-machine Ordinaut (secrets, Redis, database, demo agent) and start it.

Runs before Django is configured, so it imports nothing from Django at module level. Every
process of the stack (deploy/Procfile) runs under honcho; Ctrl-C stops them all, and the private
Redis this script may have started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PRIVATE_REDIS_PORT = 6390
REDIS_WAIT_S = 10.0

INSTALL_REDIS_HELP = """\
Ordinaut needs Redis (broker, event stream, locks), and none answers at {url}.
Either point REDIS_URL at a running Redis, or install one:
  Debian/Ubuntu:  sudo apt-get install redis-server
  Fedora:         sudo dnf install redis
  macOS:          brew install redis
  Docker:         docker run -d -p 6379:6379 redis:7
When `redis-server` is on the PATH, `make run` starts a private one under var/ by itself."""


def say(message: str) -> None:
    print(f"[ordinaut] {message}", flush=True)


def secret_file(path: Path, make: str | None = None) -> str:
    """A secret kept in var/ (mode 0600), created on first use so restarts reuse it."""
    if path.exists():
        return path.read_text().strip()
    value = make or secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def redis_answers(url: str) -> bool:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        with socket.create_connection((host, port), timeout=1.0) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    # A password-protected Redis answers -NOAUTH: it is there; the URL carries the password.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free TCP port")


def redis_plan(environ: Mapping[str, str], *, default_url: str | None = None) -> tuple[str, str]:
    """What `make run` does about Redis, and at which URL: "use" the Redis answering at REDIS_URL
    (or the default); "start" a private one when REDIS_URL is unset, nothing answers at the
    default and `redis-server` is on the PATH; else "install": say how to get Redis, and stop.
    An explicit REDIS_URL is never replaced by a private Redis: it names the one to use."""
    url = environ.get("REDIS_URL", default_url or DEFAULT_REDIS_URL)
    if redis_answers(url):
        return "use", url
    if "REDIS_URL" not in environ and shutil.which("redis-server", path=environ.get("PATH")) is not None:
        return "start", url
    return "install", url


def start_private_redis(var_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(PRIVATE_REDIS_PORT)
    command = [
        "redis-server",
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + REDIS_WAIT_S
    while time.monotonic() < deadline:
        if redis_answers(url):
            return proc, url
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit(f"The private redis-server did not start; see {data_dir / 'redis.log'}.")


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    command = [sys.executable, str(BASE_DIR / "manage.py"), *args]
    result = subprocess.run(command, env=env, cwd=BASE_DIR, text=True, stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"`manage.py {' '.join(args)}` failed (exit {result.returncode}).")
    return result.stdout or ""


def ensure_operator(env: dict[str, str], var_dir: Path) -> str:
    """An admin login for the Django admin, created once; its password is kept in var/."""
    password_file = var_dir / "admin_password"
    if password_file.exists():
        return password_file.read_text().strip()
    password = secrets.token_urlsafe(12)
    env = {
        **env,
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": password,
        "DJANGO_SUPERUSER_EMAIL": "admin@localhost",
    }
    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "createsuperuser", "--noinput"],
        env=env,
        cwd=BASE_DIR,
        text=True,
        capture_output=True,
    )
    if result.returncode != 0:
        return "(the admin user already exists; reset it with `.venv/bin/python manage.py changepassword admin`)"
    return secret_file(password_file, password)


def main() -> int:
    var_dir = Path(os.environ.get("ORDINAUT_VAR_DIR", BASE_DIR / "var")).resolve()
    (var_dir / "static").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["ORDINAUT_VAR_DIR"] = str(var_dir)
    env.setdefault("SECRET_KEY", secret_file(var_dir / "secret_key", secrets.token_urlsafe(50)))
    env.setdefault("ORDINAUT_HOST", "127.0.0.1")
    env.setdefault("ORDINAUT_PORT", "8000")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{secret_file(var_dir / 'flower_password')}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The Procfile says `python`: make that this virtualenv's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    redis_proc: subprocess.Popen[bytes] | None = None
    plan, redis_url = redis_plan(os.environ)
    if plan == "install":
        print(INSTALL_REDIS_HELP.format(url=redis_url), file=sys.stderr)
        return 2
    if plan == "start":
        default_url = redis_url
        redis_proc, redis_url = start_private_redis(var_dir)
        say(f"no Redis at {default_url}: started a private one at {redis_url} (data in {var_dir / 'redis'})")
    env["REDIS_URL"] = redis_url

    try:
        database = env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'ordinaut.sqlite3'} (embedded default)"
        say(f"database: {database}")
        say("applying migrations ...")
        manage(env, "migrate", "--noinput")
        token = manage(env, "demo_agent", "--token-file", str(var_dir / "demo_token"), capture=True).strip()
        token = token.splitlines()[-1]
        admin_password = ensure_operator(env, var_dir)
        base = f"http://{env['ORDINAUT_HOST']}:{env['ORDINAUT_PORT']}"
        flower_user, flower_password = env["FLOWER_BASIC_AUTH"].split(":", 1)
        print(
            BANNER.format(
                base=base,
                token=token,
                admin_password=admin_password,
                flower=f"http://{env['ORDINAUT_HOST']}:{env['FLOWER_PORT']}",
                flower_user=flower_user,
                flower_password=flower_password,
                token_file=var_dir / "demo_token",
            ),
            flush=True,
        )
        honcho = [
            sys.executable,
            "-m",
            "honcho",
            "-f",
            str(BASE_DIR / "deploy" / "Procfile"),
            "-d",
            str(BASE_DIR),
            "start",
        ]
        proc = subprocess.Popen(honcho, env=env, cwd=BASE_DIR)
        # A terminal's Ctrl-C reaches honcho directly; a SIGTERM sent to this script is passed on
        # so that honcho stops every process it started.
        signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # honcho got the same Ctrl-C from the terminal and is stopping its processes.
            return proc.wait()
    finally:
        if redis_proc is not None and redis_proc.poll() is None:
            redis_proc.send_signal(signal.SIGTERM)
            try:
                redis_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                redis_proc.kill()


BANNER = """
================================================================================
 Ordinaut is starting: web, worker, beat, events and Flower (Ctrl-C stops everything)

   API          {base}/            (bearer token below)
   API docs     {base}/docs        (OpenAPI: {base}/openapi.json)
   Health       {base}/health
   Metrics      {base}/metrics
   Admin        {base}/admin/      user admin / {admin_password}
   Flower       {flower}/         user {flower_user} / {flower_password}

 Demo agent token (every scope; also in {token_file}):
   {token}

 Try it:
   TOKEN=$(cat {token_file})
   curl -s -X POST {base}/tasks -H "Authorization: Bearer $TOKEN" \\
        -H 'Content-Type: application/json' \\
        -d '{{"title": "hello", "schedule_kind": "manual", "payload": {{"pipeline":
             [{{"id": "greet", "uses": "orchestrator.echo", "with": {{"text": "hello"}}}}]}}}}'
   curl -s -X POST {base}/tasks/<task id>/run_now -H "Authorization: Bearer $TOKEN"
   curl -s {base}/runs/<run id> -H "Authorization: Bearer $TOKEN"
   curl -s -X POST {base}/events -H "Authorization: Bearer $TOKEN" \\
        -H 'Content-Type: application/json' -d '{{"topic": "hello.world", "payload": {{}}}}'
================================================================================
"""

if __name__ == "__main__":
    sys.exit(main())
