"""Prometheus multiprocess mode for a prefork worker: where its pool processes keep their metrics.

prometheus_client decides once, when it is first imported, whether metric values live in memory or
in files under PROMETHEUS_MULTIPROC_DIR, and Django's set-up imports it (django-prometheus, the
apps' metrics modules) before any Celery signal reaches us. A worker's jobs run in pool processes,
while its metrics port is served by the main process: the values must be files the main process
can read. So the Celery app module (ordinaut_site/celery.py) calls `worker_dir_prepare` while it is
imported, and a worker started without PROMETHEUS_MULTIPROC_DIR gets a private directory of its
own, removed when it stops. An operator's PROMETHEUS_MULTIPROC_DIR (one per host, shared by every
process there) is used as it is. This module does not import prometheus_client; the `celery`
command may have (it loads its plugins, Flower's among them, before the app): then its choice is
made again, before any of Ordinaut's metrics exist.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIVATE_PREFIX = "ordinaut-worker-metrics-"
# Set (to the directory) in a worker whose directory this module made: it removes it at the end.
PRIVATE_ENV = "ORDINAUT_METRICS_PRIVATE_DIR"


def is_worker_command(argv: Sequence[str]) -> bool:
    """`celery ... worker ...` (the Procfile's worker, or `python -m celery ... worker`)."""
    program = Path(argv[0]).name if argv else ""
    return program in {"celery", "__main__.py", "celery.exe"} and "worker" in argv[1:]


def worker_dir_prepare(argv: Sequence[str], environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Give a worker that has no PROMETHEUS_MULTIPROC_DIR a private one (its pool processes inherit
    it); directories left by workers that died without cleaning up are removed. Returns the
    directory in use, or None when this process is not a worker or its metrics port is off."""
    if not is_worker_command(argv):
        return None
    if environ.get(ENV):
        return environ[ENV]
    if environ.get("ORDINAUT_METRICS_PORT_WORKER", "").strip() == "0":
        return None
    _remove_orphans(Path(tempfile.gettempdir()))
    path = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")
    environ[ENV] = environ[PRIVATE_ENV] = path
    values: Any = sys.modules.get("prometheus_client.values")
    if values is not None:
        values.ValueClass = values.get_value_class()
    return path


def private_dir_remove(environ: MutableMapping[str, str] = os.environ) -> None:
    """At the worker's end: remove the private directory (an operator's directory stays)."""
    path = environ.get(PRIVATE_ENV)
    if path and environ.get(ENV) == path:
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans(parent: Path) -> None:
    for path in parent.glob(f"{PRIVATE_PREFIX}*"):
        pid = path.name[len(PRIVATE_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
