"""`make run`: prepare a single-machine Ordinaut (secrets, Redis, database, demo agent) and start it.

Runs before Django is configured, so it imports nothing from Django at module level. Every
process of the stack (deploy/Procfile) runs under honcho; Ctrl-C stops them all, and the private
Redis this script may have started.

What it decides (SAVED_KEYS: database URL, Redis URL, SECRET_KEY, DEBUG, var directory) it adds to
the settings file, `.env` at the checkout's root (ORDINAUT_ENV_FILE moves it, "none" turns it off;
ordinaut_site/envfile.py), so every later `manage.py` command run from the checkout finds them.
Keys the file already has are left as they are and win over its own defaults; the environment wins
over both.
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

from ordinaut_site import envfile

BASE_DIR = Path(__file__).resolve().parent.parent
# The quick start's own Redis database, on whatever Redis answers at 127.0.0.1:6379 (or on its
# private redis-server): not database 0, which other programs on the machine may be using.
QUICKSTART_REDIS_DB = 3
DEFAULT_REDIS_URL = f"redis://127.0.0.1:6379/{QUICKSTART_REDIS_DB}"
PRIVATE_REDIS_PORT = 6390
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# What later commands must agree on with the running stack, kept in the settings file.
SAVED_KEYS = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ORDINAUT_VAR_DIR")
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


def redis_plan(
    environ: Mapping[str, str], *, saved: Mapping[str, str] | None = None, default_url: str | None = None
) -> tuple[str, str]:
    """What `make run` does about Redis, and at which URL: "use" the Redis answering at REDIS_URL
    (the environment's, else the settings file's, else database QUICKSTART_REDIS_DB on
    127.0.0.1:6379); "start" a private one when nothing answers, `redis-server` is on the PATH and
    REDIS_URL is not in the environment (an explicit REDIS_URL names the one to use and is never
    replaced), nor a non-loopback URL in the file; else "install": say how to get Redis, and stop.
    A loopback URL in the file is where an earlier `make run` started its private Redis: "start"
    it there again."""
    saved = saved or {}
    url = environ.get("REDIS_URL", saved.get("REDIS_URL", default_url or DEFAULT_REDIS_URL))
    if redis_answers(url):
        return "use", url
    replaceable = "REDIS_URL" not in environ and ("REDIS_URL" not in saved or urlparse(url).hostname in LOOPBACK)
    if replaceable and shutil.which("redis-server", path=environ.get("PATH")) is not None:
        return "start", url
    return "install", url


def start_private_redis(
    var_dir: Path, *, port: int | None = None, db: int = QUICKSTART_REDIS_DB
) -> tuple[subprocess.Popen[bytes], str]:
    """redis-server on loopback, on `port` (else PRIVATE_REDIS_PORT or a free one), data under var/;
    the URL names database `db`."""
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(PRIVATE_REDIS_PORT)
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
    url = f"redis://127.0.0.1:{port}/{db}"
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


def shown(path: Path) -> str:
    """A path as the banner shows it: relative to the checkout (where `make run` runs) when inside it."""
    try:
        return str(path.resolve().relative_to(BASE_DIR))
    except ValueError:
        return str(path)


def masked(url: str) -> str:
    """The URL without its password."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


def describe_database(url: str) -> str:
    if url.startswith("sqlite:///"):
        return f"SQLite, {shown(Path(url[len('sqlite:///') :]))}"
    return masked(url)


def describe_redis(url: str, plan: str, source: str) -> str:
    """Which Redis, and why that one: the quick start's database of 127.0.0.1:6379, its private
    redis-server, or the REDIS_URL of the environment or the settings file."""
    if plan == "start":
        note = "the private redis-server `make run` started"
    elif source == "default":
        note = f"database {QUICKSTART_REDIS_DB}: the quick start's own, not database 0"
    else:
        note = f"REDIS_URL of the {source}"
    return f"{masked(url)} ({note})"


def describe_env_file(path: Path | None) -> str:
    if path is None:
        return "none (ORDINAUT_ENV_FILE=none): later commands need these variables exported"
    return f"{shown(path)} (every command run from this checkout reads it)"


def render_banner(
    *,
    base: str,
    flower: str,
    flower_user: str,
    flower_password: str,
    admin_password: str,
    token: str,
    token_file: Path,
    database_url: str,
    redis: str,
    env_file: Path | None,
) -> str:
    return BANNER.format(
        base=base,
        token=token,
        admin_password=admin_password,
        flower=flower,
        flower_user=flower_user,
        flower_password=flower_password,
        token_file=shown(token_file),
        database=describe_database(database_url),
        redis=redis,
        env_file=describe_env_file(env_file),
    )


def save_settings(path: Path | None, env: Mapping[str, str], saved: Mapping[str, str]) -> None:
    """Add what the stack runs with to the settings file, for the keys it lacks; say where the
    environment overrides a line of it (a command run without that variable gets the file's)."""
    if path is None:
        return
    added = envfile.fill_missing(path, {key: env[key] for key in SAVED_KEYS})
    if added:
        say(f"settings for later commands: {', '.join(added)} added to {shown(path)} (mode 0600)")
    for key in SAVED_KEYS:
        if key in saved and saved[key] != env[key]:
            say(f"{key} of the environment overrides {shown(path)}'s; commands run without it use the file's")


def main() -> int:
    env_path = envfile.resolve(
        os.environ.get("ORDINAUT_ENV_FILE"), BASE_DIR / ".env", testing=bool(os.environ.get("PYTEST_VERSION"))
    )
    try:
        saved = envfile.read(env_path) if env_path is not None else {}
    except (OSError, envfile.EnvFileError) as exc:
        print(f"Cannot read the settings file: {exc}", file=sys.stderr)
        return 2
    # The environment wins over the settings file, which wins over the defaults below.
    env = {**saved, **os.environ}
    var_dir = Path(env.get("ORDINAUT_VAR_DIR") or BASE_DIR / "var").resolve()
    (var_dir / "static").mkdir(parents=True, exist_ok=True)
    env["ORDINAUT_VAR_DIR"] = str(var_dir)
    env.setdefault("SECRET_KEY", secret_file(var_dir / "secret_key", secrets.token_urlsafe(50)))
    env.setdefault("DEBUG", "0")
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{var_dir / 'ordinaut.sqlite3'}"
    env.setdefault("ORDINAUT_HOST", "127.0.0.1")
    env.setdefault("ORDINAUT_PORT", "8000")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_BASIC_AUTH", f"admin:{secret_file(var_dir / 'flower_password')}")
    env.setdefault("PYTHONUNBUFFERED", "1")
    # The Procfile says `python`: make that this virtualenv's interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"

    redis_proc: subprocess.Popen[bytes] | None = None
    plan, redis_url = redis_plan(os.environ, saved=saved)
    source = "environment" if "REDIS_URL" in os.environ else "settings file" if "REDIS_URL" in saved else "default"
    if plan == "install":
        print(INSTALL_REDIS_HELP.format(url=redis_url), file=sys.stderr)
        return 2
    if plan == "start":
        wanted = urlparse(redis_url)
        if source == "settings file":  # the private Redis of an earlier run: again at its port
            db = int(wanted.path[1:]) if wanted.path[1:].isdigit() else QUICKSTART_REDIS_DB
            redis_proc, redis_url = start_private_redis(var_dir, port=wanted.port, db=db)
        else:
            redis_proc, redis_url = start_private_redis(var_dir)
        data = shown(var_dir / "redis")
        say(f"no Redis at {masked(wanted.geturl())}: started a private one at {redis_url} (data in {data})")
    env["REDIS_URL"] = redis_url
    redis = describe_redis(redis_url, plan, source)

    try:
        say(f"database: {describe_database(env['DATABASE_URL'])}")
        say(f"redis: {redis}")
        save_settings(env_path, env, saved)
        say("applying migrations ...")
        manage(env, "migrate", "--noinput")
        token = manage(env, "demo_agent", "--token-file", str(var_dir / "demo_token"), capture=True).strip()
        token = token.splitlines()[-1]
        admin_password = ensure_operator(env, var_dir)
        flower_user, flower_password = env["FLOWER_BASIC_AUTH"].split(":", 1)
        host = env["ORDINAUT_HOST"]
        banner = render_banner(
            base=f"http://{host}:{env['ORDINAUT_PORT']}",
            flower=f"http://{host}:{env['FLOWER_PORT']}",
            flower_user=flower_user,
            flower_password=flower_password,
            admin_password=admin_password,
            token=token,
            token_file=var_dir / "demo_token",
            database_url=env["DATABASE_URL"],
            redis=redis,
            env_file=env_path,
        )
        print(banner, flush=True)
        honcho = [
            sys.executable,
            "-m",
            "honcho",
            "-f",
            str(BASE_DIR / "deploy" / "Procfile"),
            "-d",
            str(BASE_DIR),
            # honcho would read .env itself, over the environment; `env` has the file's lines already.
            "-e",
            os.devnull,
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
   Database     {database}
   Redis        {redis}
   Settings     {env_file}

 Demo agent token (every scope; also in {token_file}):
   {token}

 In another terminal, in this directory (no variables to export):
   .venv/bin/python manage.py create_agent NAME --scopes tasks:read,tasks:write,runs:read
   curl -s {base}/tasks -H "Authorization: Bearer $(cat {token_file})"
 More: README.md, "A five-minute tour".
================================================================================
"""

if __name__ == "__main__":
    sys.exit(main())
