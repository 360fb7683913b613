"""Celery jobs of the cross-cutting pieces (the hourly purge of expired Idempotency-Key records), and
the database-connection handling around every job."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections, connections

from .idempotency import purge_expired


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


@shared_task(name="ordinaut.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys_job() -> int:
    return purge_expired()
