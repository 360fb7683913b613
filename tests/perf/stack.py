"""Shared plumbing of the B4-B6 benchmarks: a database of their own, the Procfile's processes, wrk,
py-spy, and what /proc says about a process tree (CPU, RSS).

Importing this module has no side effects (the benchmarks' `--help` and tests/test_bench_cli.py
import it without a database); Django is set up by `django_setup`.

The database. Each benchmark runs as the role `ordinaut_bench` (created when missing, NOSUPERUSER,
CONNECTION LIMIT 30) on a database it owns: a web process that opens too many connections then fails
its own requests instead of taking PostgreSQL's last connections from everything else on the machine
(a superuser ignores connection limits). BENCH_ADMIN_DATABASE_URL names a superuser connection for
creating the role and database (default postgres://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

BASE_DIR = Path(__file__).resolve().parents[2]
LOG_DIR = BASE_DIR / "var" / "bench-logs"
PROFILE_DIR = BASE_DIR / "var" / "bench-profiles"
BENCH_ROLE = "ordinaut_bench"
BENCH_ROLE_CONNECTION_LIMIT = 30


_held_locks: list[IO[Any]] = []


def one_at_a_time(name: str) -> None:
    """Exit with a clear message when another run of benchmark `name` is going on on this machine:
    two runs share its database and Redis database, and the second one's TRUNCATE would deadlock
    with (or wipe the rows of) the first. The lock (var/bench-<name>.lock) is held until this
    process exits."""
    path = BASE_DIR / "var" / f"bench-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        sys.exit(f"{name}: another run of this benchmark is going on ({holder}); wait for it, it shares the database")
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, started {datetime.now():%H:%M:%S}")
    handle.flush()
    _held_locks.append(handle)


ADMIN_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def make_say(prefix: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[{prefix} {datetime.now():%H:%M:%S}] {message}", flush=True)

    return say


def loadavg() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def machine(load_at_start: list[float]) -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": load_at_start,
        "loadavg_at_end": loadavg(),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: Iterable[float]) -> float:
    listed = list(values)
    return statistics.median(listed) if listed else 0.0


# --- Database -------------------------------------------------------------------------------------


def bench_database_url(name: str) -> str:
    """DATABASE_URL for a benchmark: the environment's when set, else `name` as the bench role."""
    return os.environ.get("DATABASE_URL") or f"postgres://{BENCH_ROLE}@127.0.0.1:5432/{name}"


def ensure_database(url: str) -> None:
    """Create the role (bench role only) and database of `url` when missing."""
    import psycopg

    parts = urlsplit(url)
    name, user = parts.path.lstrip("/"), parts.username or "postgres"
    admin_url = os.environ.get("BENCH_ADMIN_DATABASE_URL", ADMIN_DATABASE_URL)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        if user == BENCH_ROLE and not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [user]).fetchone():
            admin.execute(
                f'CREATE ROLE "{user}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                f"CONNECTION LIMIT {BENCH_ROLE_CONNECTION_LIMIT}"
            )
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            admin.execute(f'CREATE DATABASE "{name}" OWNER "{user}"')


def connections_of(database: str) -> int:
    """Connections open to `database` now (all roles)."""
    import psycopg

    with psycopg.connect(os.environ.get("BENCH_ADMIN_DATABASE_URL", ADMIN_DATABASE_URL), autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]).fetchone()
    return int(row[0]) if row else 0


def django_setup(*, database_url: str, redis_url: str, queue_prefix: str) -> None:
    """Environment of this process (and of the processes it starts), then django.setup()."""
    sys.path.insert(0, str(BASE_DIR))
    os.environ["DATABASE_URL"] = database_url
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("SECRET_KEY", "benchmark-only-secret-key")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
    os.environ["CELERY_QUEUE"] = f"{queue_prefix}-{uuid.uuid4().hex[:8]}"
    # The measured paths are the agents' API, not the rate limiter (B4 measures it separately).
    for name in ("ORDINAUT_RATE_LIMIT", "ORDINAUT_WRITE_RATE_LIMIT", "ORDINAUT_ANON_RATE_LIMIT"):
        os.environ.setdefault(name, "off")
    import django

    django.setup()
    from django.core.management import call_command

    ensure_database(database_url)
    call_command("migrate", verbosity=0)


def bench_agent(scopes: list[str]) -> tuple[Any, str]:
    """A fresh agent with `scopes` and a bearer token for it."""
    from ordinaut_site.audit import Actor
    from ordinaut_site.services import agent_create, token_issue

    actor = Actor.system("bench")
    agent = agent_create(name=f"bench-{uuid.uuid4().hex[:6]}", scopes=scopes, actor=actor)
    _token, raw = token_issue(agent=agent, actor=actor)
    return agent, raw


# --- Processes ------------------------------------------------------------------------------------


def procfile_command(role: str) -> str:
    """deploy/Procfile's command line for `role` (web, worker, beat, events)."""
    prefix = f"{role}:"
    for line in (BASE_DIR / "deploy" / "Procfile").read_text().splitlines():
        if line.startswith(prefix):
            return line.removeprefix(prefix).strip()
    raise LookupError(f"deploy/Procfile has no {role} line")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A Procfile line run by bash in a session of its own (as `make run`'s honcho would), logging to
    a file; `command` may be changed from the Procfile's (the B4 baseline swaps the ASGI app)."""

    def __init__(self, name: str, command: str, *, env: dict[str, str] | None = None, port: int | None = None):
        self.name = name
        self.command = command
        self.port = port
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        if port is not None:
            self.env.update(ORDINAUT_HOST="127.0.0.1", ORDINAUT_PORT=str(port))
        self.env.pop("ORDINAUT_TRUSTED_PROXIES", None)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = LOG_DIR / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @classmethod
    def role(cls, role: str, *, name: str | None = None, env: dict[str, str] | None = None, **kw: Any) -> Proc:
        return cls(name or role, procfile_command(role), env=env, **kw)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready: Callable[[], bool] | None = None, timeout: float = 90) -> Proc:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec {self.command}"],
            env=self.env,
            cwd=BASE_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        check = ready or (self._accepts if self.port is not None else None)
        if check is not None:
            deadline = time.monotonic() + timeout
            while not check():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout}s; log {self.log_path}")
                time.sleep(0.1)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port or 0), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=timeout)
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- /proc ----------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the fields after "(comm)", from field 3 (state) on


def children(pid: int) -> list[int]:
    """Direct children of `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds of these processes (their own, not their children's)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


# --- wrk ------------------------------------------------------------------------------------------

WRK_MISSING = "wrk is not installed: `apt-get install -y wrk` (Debian's package)"
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise SystemExit(WRK_MISSING)
    return found


def lua_script(
    *,
    method: str,
    headers: dict[str, str],
    body: str | None = None,
    unique_header: str | None = None,
    delay_ms: float | None = None,
) -> str:
    """A wrk script: one request shape; `unique_header` gets a value unique per request (wrk thread
    and counter); `delay_ms` makes each connection wait that long between its requests (a paced run)."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(body)}")
    if unique_header:
        lines += [
            "local counter = 0",
            "local prefix = tostring(math.random(1, 1000000000))",
            "request = function()",
            "  counter = counter + 1",
            f"  wrk.headers[{json.dumps(unique_header)}] = prefix .. '-' .. counter",
            "  return wrk.format()",
            "end",
        ]
    if delay_ms is not None:
        lines.append(f"delay = function() return {max(0.0, delay_ms):.3f} end")
    return "\n".join(lines) + "\n"


@dataclass
class WrkResult:
    requests: int = 0
    duration_s: float = 0.0
    per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    cpu_ms_per_request: float | None = None
    raw: str = ""

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": self.duration_s,
            "per_s": self.per_s,
            "latency_ms": self.latency_ms,
            "non_2xx": self.non_2xx,
            "socket_errors": self.socket_errors,
            "server_cpu_ms_per_request": self.cpu_ms_per_request,
        }


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"not a wrk duration: {text!r}")
    return round(float(match.group(1)) * _UNITS_MS[match.group(2)], 3)


def parse_wrk(output: str) -> WrkResult:
    """wrk --latency's report as figures."""
    result = WrkResult(raw=output)
    if found := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output):
        result.requests = int(found.group(1))
        result.duration_s = round(_ms(found.group(2) + found.group(3)) / 1000, 3)
    if found := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result.per_s = float(found.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, flags=re.M):
        result.latency_ms[f"p{pct}"] = _ms(value)
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        result.non_2xx = int(found.group(1))
    if found := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output):
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, found.groups()), strict=True))
    return result


def wrk(
    url: str, script: str, *, seconds: float, connections: int = 8, server_pids: Callable[[], list[int]]
) -> WrkResult:
    """`wrk -t1 -cN -dS --latency -s script url`, and the server's CPU per request meanwhile."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        pids = server_pids()
        cpu_before = cpu_seconds(pids)
        command = [wrk_path(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "--latency"]
        done = subprocess.run([*command, "-s", path, url], capture_output=True, text=True, timeout=seconds + 60)
        cpu_used = cpu_seconds(pids) - cpu_before
    finally:
        os.unlink(path)
    result = parse_wrk(done.stdout)
    if done.returncode != 0 or not result.requests:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    result.cpu_ms_per_request = round(cpu_used * 1000 / result.requests, 2)
    return result


# --- py-spy ---------------------------------------------------------------------------------------


def py_spy_path() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


def py_spy_record(pid: int, seconds: float, out: Path, *, subprocesses: bool = False, rate: int = 50) -> Path | None:
    """Sample `pid` for `seconds` in the background; returns the collapsed-stack file it will write
    (speedscope.app and flamegraph tools read it), or None without py-spy. Wait with py_spy_wait."""
    binary = py_spy_path()
    if binary is None:
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [binary, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate)]
    command += ["--format", "raw", "--output", str(out), "--nonblocking"]
    if subprocesses:
        command.append("--subprocesses")
    _py_spy_running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    return out


_py_spy_running: list[subprocess.Popen[bytes]] = []


def py_spy_wait(timeout: float = 120) -> None:
    while _py_spy_running:
        proc = _py_spy_running.pop()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()


_IDLE_LEAVES = ("select (selectors", "epoll", "wait (threading", "_worker (concurrent", "poll (", "sleep (")


def profile_summary(path: Path, *, top: int = 25, focus: str = "") -> dict[str, Any]:
    """The heaviest functions of a collapsed-stack profile: the share of the busy samples (idle
    waits at the leaf left out) in which each appears (inclusive), for functions matching `focus`."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")]
        if any(mark in frames[-1] for mark in _IDLE_LEAVES):
            idle += count
            continue
        busy += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if not focus or re.search(focus, frame):
                inclusive[frame] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "share": round(n / busy, 3)} for name, n in counter.most_common(top)]

    return {
        "file": str(path),
        "busy_samples": busy,
        "idle_samples": idle,
        "inclusive": shares(inclusive),
        "self": shares(leaves),
    }
