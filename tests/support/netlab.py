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
