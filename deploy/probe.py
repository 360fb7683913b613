"""Health probes of the containers' processes: `entrypoint.sh check ROLE` (compose healthchecks, the
image's HEALTHCHECK, Kubernetes exec probes). Exit 0 and one line when healthy, 1 and the reason not.

- web: GET /health/ready (database and Redis answer) on this container's port; `web live` asks
  /health/live instead.
- flower: GET /healthcheck (Flower's own, no basic auth).
- worker: this host's worker node (the Procfile's `-n`, expanded as Celery does) answers a ping.
- events: a consumer of this host (named `<hostname>-<pid>`) beat in Redis within its TTL.
- beat: the leading beat's heartbeat is fresh. Of two beats only the leader writes it, so this says
  "the pair ticks", for both; a beat process that dies ends its container anyway.
- migrate: nothing to probe (a one-shot job).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
PROCFILE = Path(__file__).with_name("Procfile")
HTTP_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 5.0


class Unhealthy(Exception):
    pass


def procfile_line(role: str) -> str:
    for line in PROCFILE.read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == role:
            return command.strip()
    raise Unhealthy(f"deploy/Procfile has no {role} line")


def probe_host() -> str:
    """A Host header the web process accepts: the first ALLOWED_HOSTS name (a leading-dot domain
    gives its bare name), or localhost when the list is `*` or unset."""
    for host in os.environ.get("ALLOWED_HOSTS", "").split(","):
        host = host.strip().lstrip(".")
        if host and "*" not in host:
            return host
    return "localhost"


def _get(url: str) -> str:
    # Plain http: with SECURE_SSL the web process still answers /health* over http (settings'
    # SECURE_REDIRECT_EXEMPT), which is all a probe from inside the container speaks.
    request = urllib.request.Request(url, headers={"Host": probe_host()})  # noqa: S310 (an http URL of ours)
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:  # noqa: S310 (our own http URL)
            return f"{response.status} {response.read(300).decode(errors='replace')}"
    except urllib.error.HTTPError as exc:
        raise Unhealthy(f"{url}: {exc.code} {exc.read(300).decode(errors='replace')}") from None
    except OSError as exc:
        raise Unhealthy(f"{url}: {exc}") from None


def check_web(which: str = "ready") -> str:
    if which not in ("ready", "live"):
        raise Unhealthy(f"web probes are `ready` or `live`, not {which!r}")
    return _get(f"http://127.0.0.1:{os.environ.get('ORDINAUT_PORT', '8000')}/health/{which}")


def check_flower() -> str:
    return _get(f"http://127.0.0.1:{os.environ.get('FLOWER_PORT', '5555')}/healthcheck")


def _django() -> None:
    sys.path.insert(0, str(BASE_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
    import django

    django.setup()


def worker_node_name() -> str:
    """The node name the Procfile's worker line gives itself (`-n worker@%h`), expanded here."""
    from celery.utils.nodenames import host_format

    match = re.search(r"(?:^|\s)(?:-n|--hostname)[=\s](\S+)", procfile_line("worker"))
    return host_format(match.group(1) if match else "celery@%h")


def check_worker() -> str:
    _django()
    from ordinaut_site.celery import app

    name = worker_node_name()
    if not app.control.ping(destination=[name], timeout=PING_TIMEOUT_S):
        raise Unhealthy(f"worker {name} did not answer a ping within {PING_TIMEOUT_S:.0f}s")
    return f"worker {name} answers"


def check_events() -> str:
    _django()
    from ordinaut_site.health import health_redis
    from tasks.event_consumer import HEARTBEAT_TTL_S, consumers_alive

    client = health_redis()
    try:
        alive = consumers_alive(client)
    finally:
        client.close()
    prefix = f"{socket.gethostname()}-"
    mine = sorted(name for name in alive if name.startswith(prefix))
    if not mine:
        raise Unhealthy(f"no events consumer of {socket.gethostname()} beat in the last {HEARTBEAT_TTL_S}s")
    return f"events consumer {', '.join(mine)} alive"


def check_beat() -> str:
    _django()
    from tasks.health import BEAT_SILENT_S, beat_heartbeat_age_s

    age = beat_heartbeat_age_s()
    if age is None:
        raise Unhealthy("no beat heartbeat: no beat leads (or none has led yet)")
    if age > BEAT_SILENT_S:
        raise Unhealthy(f"the leading beat's heartbeat is {age:.0f}s old (more than {BEAT_SILENT_S:.0f}s)")
    return f"beat leads, heartbeat {age:.1f}s old"


def check_migrate() -> str:
    return "migrate is a one-shot job"


CHECKS: dict[str, Callable[..., str]] = {
    "web": check_web,
    "worker": check_worker,
    "beat": check_beat,
    "events": check_events,
    "flower": check_flower,
    "migrate": check_migrate,
}


def container_role(cmdline: Path = Path("/proc/1/cmdline")) -> str:
    """The role this container was started with: the word after entrypoint.sh in PID 1's command
    line (tini -- /app/deploy/entrypoint.sh ROLE)."""
    try:
        argv = cmdline.read_bytes().split(b"\0")
    except OSError as exc:
        raise Unhealthy(f"no role given, and PID 1's command line cannot be read: {exc}") from None
    words = [word.decode(errors="replace") for word in argv if word]
    for index, word in enumerate(words[:-1]):
        if word.endswith("entrypoint.sh"):
            return words[index + 1]
    raise Unhealthy(f"no role given, and PID 1 ({shlex.join(words)}) is not entrypoint.sh ROLE")


def main(argv: list[str]) -> int:
    try:
        role, *args = argv or [container_role()]
        check = CHECKS.get(role)
        if check is None:
            raise Unhealthy(f"unknown role {role!r}; roles: {', '.join(CHECKS)}")
        print(f"healthy: {check(*args)}")
        return 0
    except Unhealthy as exc:
        print(f"unhealthy: {exc}")
        return 1
    except Exception as exc:  # a probe that cannot even ask is a failed probe, said in one line
        print(f"unhealthy: {type(exc).__name__}: {exc}"[:500])
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
