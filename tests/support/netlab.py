"""Several hosts on one machine: Linux network namespaces joined by veth pairs to a bridge, with a
link that can be cut and restored, and private PostgreSQL and Redis instances on one of them.

Only addresses of the lab's own subnet are used; nothing leaves the machine."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any


class LabUnavailable(Exception):
    """Namespaces, veth pairs or the database binaries are not available here (the reason)."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


@dataclass
class Host:
    name: str
    netns: str
    address: str
    veth: str  # the root side of its link

    def command(self, *args: str, user: str | None = None) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns]
        return [*prefix, "runuser", "-u", user, "--", *args] if user else [*prefix, *args]


@dataclass
class Process:
    label: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        self.log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class NetLab:
    """Hosts `name -> address` on a /24 of 10.x.y.0, each in its own namespace, all on one bridge
    whose root-side address (.254) lets this process reach them."""

    names: list[str]
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ordinaut-netlab-")))

    def __post_init__(self) -> None:
        self.tag = uuid.uuid4().hex[:5]
        self.bridge = f"or7b{self.tag}"
        self.subnet = f"10.{random.randint(80, 250)}.{random.randint(1, 250)}"
        self.gateway = f"{self.subnet}.254"

    # --- the network ---------------------------------------------------------------------------

    def up(self) -> NetLab:
        for tool in ("ip", "runuser"):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"`{tool}` is not installed")
        if os.geteuid() != 0:
            raise LabUnavailable("creating network namespaces needs root")
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
        except subprocess.CalledProcessError as exc:
            raise LabUnavailable(f"cannot create a bridge: {exc.stderr.strip()}") from None
        try:
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for number, name in enumerate(self.names, start=1):
                host = Host(name, f"or7-{self.tag}-{name}", f"{self.subnet}.{number}", f"v{self.tag}{number}")
                _run("ip", "netns", "add", host.netns)
                _run("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
                _run("ip", "link", "set", host.veth, "master", self.bridge, "up")
                _run("ip", "netns", "exec", host.netns, "ip", "addr", "add", f"{host.address}/24", "dev", "eth0")
                _run("ip", "netns", "exec", host.netns, "ip", "link", "set", "eth0", "up")
                _run("ip", "netns", "exec", host.netns, "ip", "link", "set", "lo", "up")
                self.hosts[name] = host
        except subprocess.CalledProcessError as exc:
            self.down()
            raise LabUnavailable(f"cannot set up the namespaces: {exc.stderr.strip()}") from None
        return self

    def cut(self, name: str) -> None:
        """The host's link goes down: it reaches nothing and nothing reaches it."""
        _run("ip", "link", "set", self.hosts[name].veth, "down")

    def restore(self, name: str) -> None:
        _run("ip", "link", "set", self.hosts[name].veth, "up")

    def down(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGKILL, timeout=10)
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.netns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- processes on the hosts ------------------------------------------------------------------

    def start(self, host: str, label: str, args: list[str], *, env: dict[str, str], user: str | None = None) -> Process:
        log_path = self.workdir / f"{label}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            self.hosts[host].command(*args, user=user),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        process = Process(label, proc, log_path, log)
        self.processes.append(process)
        return process

    def start_postgres(self, host: str, *, port: int = 5432) -> str:
        """A private PostgreSQL cluster on `host`, trusting the lab's subnet; its URL (database `ordinaut`)."""
        initdb = _pg_binary("initdb")
        data = self.workdir / "pgdata"
        data.mkdir()
        shutil.chown(self.workdir, user="postgres")
        shutil.chown(data, user="postgres")
        subprocess.run(
            ["runuser", "-u", "postgres", "--", initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self.subnet}.0/24 trust\n")
        address = self.hosts[host].address
        postgres = _pg_binary("postgres")
        self.start(
            host,
            "postgres",
            [postgres, "-D", str(data), "-c", f"listen_addresses={address}", "-p", str(port), "-k", str(data)],
            env={"PATH": os.environ.get("PATH", "")},
            user="postgres",
        )
        wait_until(lambda: port_open(address, port), timeout=60, message="the lab's PostgreSQL")
        import psycopg

        def connect() -> bool:
            try:
                with psycopg.connect(f"postgresql://postgres@{address}:{port}/postgres", autocommit=True) as conn:
                    conn.execute("CREATE DATABASE ordinaut")
                return True
            except psycopg.OperationalError:
                return False

        wait_until(connect, timeout=60, message="the lab's PostgreSQL to accept connections")
        return f"postgres://postgres@{address}:{port}/ordinaut"

    def start_redis(self, host: str, *, port: int = 6379) -> str:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise LabUnavailable("redis-server is not installed")
        address = self.hosts[host].address
        self.start(
            host,
            "redis",
            [
                redis_server,
                "--bind",
                address,
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            env={"PATH": os.environ.get("PATH", "")},
        )
        wait_until(lambda: port_open(address, port), timeout=30, message="the lab's Redis")
        return f"redis://{address}:{port}/0"


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
        if not candidates:
            raise LabUnavailable(f"PostgreSQL's {name} is not installed")
        found = str(candidates[-1])
    return found


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(predicate: Callable[[], Any], *, timeout: float, message: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {message}")


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@dataclass
class LoopbackLab:
    """Private PostgreSQL and Redis on 127.0.0.1 (free ports, their data in a temporary folder) and
    processes beside them, without namespaces: runs wherever the binaries are installed. Both
    servers can be stopped and started again on the same port and data, as a fault suite needs."""

    address: str = "127.0.0.1"
    processes: list[Process] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ordinaut-loopback-")))
    redis_args: list[str] = field(default_factory=list)
    redis: Process | None = None
    pgdata: Path | None = None

    def start(self, label: str, args: list[str], *, env: dict[str, str]) -> Process:
        log_path = self.workdir / f"{label}.log"
        log = log_path.open("ab")
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        process = Process(label, proc, log_path, log)
        self.processes.append(process)
        return process

    def down(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGKILL, timeout=10)
        if self.pgdata is not None and (self.pgdata / "postmaster.pid").exists():
            self._pg_ctl("stop", "-m", "immediate", check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- PostgreSQL: a cluster of its own, started and stopped by pg_ctl ---------------------------

    @property
    def postgres_log(self) -> Path:
        return self.workdir / "postgres.log"

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.pgdata is not None
        command = [_pg_binary("pg_ctl"), "-D", str(self.pgdata), *args]
        if os.geteuid() == 0:  # the server refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=check, capture_output=True, text=True, timeout=120)

    def start_postgres(self) -> str:
        """initdb (as user postgres when run as root; trust auth), start on a free port; its URL
        (database `ordinaut`)."""
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise LabUnavailable("`runuser` is not installed")
        initdb = _pg_binary("initdb")
        self.pgdata = self.workdir / "pgdata"
        self.pgdata.mkdir()
        self.postgres_log.touch()
        if os.geteuid() == 0:
            for path in (self.workdir, self.pgdata, self.postgres_log):
                shutil.chown(path, user="postgres")
        command = [initdb, "-D", str(self.pgdata), "-A", "trust", "-U", "postgres", "--no-sync"]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        self.postgres_port = free_port(self.address)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{self.address}'\nport = {self.postgres_port}\n"
                f"unix_socket_directories = '{self.pgdata}'\n"
                # The server process may die, not the machine: no fsync is safe here and spares the disk.
                "fsync = off\nmax_connections = 200\n"
            )
        self.postgres_start()
        import psycopg

        with psycopg.connect(self.postgres_url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE ordinaut")
        return self.postgres_url("ordinaut").replace("postgresql://", "postgres://")

    def postgres_url(self, database: str) -> str:
        return f"postgresql://postgres@{self.address}:{self.postgres_port}/{database}"

    def postgres_start(self) -> None:
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.postgres_log))
        wait_until(lambda: port_open(self.address, self.postgres_port), timeout=60, message="the private PostgreSQL")

    def postgres_stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: `fast` (sessions ended, a clean shutdown) or `immediate` (like a crash:
        recovery from the WAL at the next start)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    # --- Redis: append-only file in the folder, stopped and started on the same port ---------------

    def start_redis(self, *, appendfsync: str = "everysec") -> str:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise LabUnavailable("redis-server is not installed")
        self.redis_port = free_port(self.address)
        data = self.workdir / "redis"
        data.mkdir()
        self.redis_args = [
            redis_server,
            "--bind",
            self.address,
            "--port",
            str(self.redis_port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            appendfsync,
            "--protected-mode",
            "no",
        ]
        self.redis_start()
        return f"redis://{self.address}:{self.redis_port}/0"

    def redis_start(self) -> None:
        self.redis = self.start("redis", self.redis_args, env={"PATH": os.environ.get("PATH", "")})
        wait_until(lambda: port_open(self.address, self.redis_port), timeout=30, message="the private Redis")

    def redis_stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: Redis writes its append-only file and exits; SIGKILL: what was fsynced survives."""
        assert self.redis is not None
        self.redis.stop(sig)
        self.processes.remove(self.redis)
        self.redis = None
