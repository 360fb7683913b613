"""Celery jobs of the cross-cutting pieces (the hourly purge of expired Idempotency-Key records), the
database-connection handling around every job, and the log correlation travelling with each message
(the request id and the agent of the API call that sent it; the run a job belongs to)."""

from __future__ import annotations

import contextlib
from typing import Any

from celery import shared_task
from celery.signals import before_task_publish, task_postrun, task_prerun
from django.db import close_old_connections, connection, connections

from . import logs
from .idempotency import purge_expired

# The message header carrying the request id of the API call (or of the job) that sent a job, so a
# run's worker lines join the request that started it; jobs a job sends (the rest of a chain,
# retries) carry it on.
REQUEST_ID_HEADER = "ordinaut_request_id"
AGENT_HEADER = "ordinaut_agent"
# The stamp a run's chain carries (runs/services/dispatch.py): each of its jobs' lines name the run,
# Celery's own ("succeeded in 0.01s", "retry in 2s") included.
RUN_STAMP = "run_id"
_HEADERS = {REQUEST_ID_HEADER: "request_id", AGENT_HEADER: "agent"}
_BOUND = "_ordinaut_log_token"


@before_task_publish.connect
def _send_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    if headers is None:
        return
    for header, field in _HEADERS.items():
        value = logs.current(field)
        if value and header not in headers:
            headers[header] = value


def _header(request: Any, name: str) -> Any:
    return getattr(request, name, None) or (getattr(request, "headers", None) or {}).get(name)


def _stamped_run(request: Any) -> str | None:
    value = (getattr(request, "stamps", None) or {}).get(RUN_STAMP) or getattr(request, RUN_STAMP, None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return str(value) if value else None


@task_prerun.connect
def _bind_request_id(task: Any = None, **kwargs: Any) -> None:
    if task is None:
        return
    request = task.request
    fields = {field: _header(request, header) for header, field in _HEADERS.items()}
    fields["run"] = _stamped_run(request)
    if any(fields.values()):
        setattr(request, _BOUND, logs.push(**fields))


@task_postrun.connect
def _unbind_request_id(task: Any = None, **kwargs: Any) -> None:
    token = getattr(task.request, _BOUND, None) if task is not None else None
    if token is not None:
        logs.pop(token)
        setattr(task.request, _BOUND, None)


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**kwargs: Any) -> None:
    """Around each job, what Django does around each request: keep the connection for
    DB_CONN_MAX_AGE, drop it when it broke. (Celery's own fixup would reconnect for every job;
    settings.CELERY_DB_REUSE_MAX turns that off.) The health-check ping Django would then send
    before the next query is skipped: it costs a round trip per job, and a dead connection is
    handled by retrying the job (runs/jobs.py DB_CONNECTION_ERRORS)."""
    close_old_connections()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            setattr(conn, "health_check_done", True)  # noqa: B010 - not in django-stubs


def connection_abandon() -> None:
    """After a time limit interrupted a job mid-statement: cancel what the database is still doing
    for it, then close the connection (the next job reconnects). Closing alone is not enough: a
    statement waiting for a row lock does not notice its client went away, and keeps the locks
    its transaction already holds (another task's row) until it gets the one it waits for."""
    raw = connection.connection
    if raw is not None:
        with contextlib.suppress(Exception):
            raw.cancel()
    connection.close()


@shared_task(name="ordinaut.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys_job() -> int:
    return purge_expired()
