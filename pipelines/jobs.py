"""Celery jobs of the pipeline engine (one job per step; a run is a chain of them) and the periodic
tool catalog refresh."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import task_postrun, task_prerun
from django.db import InterfaceError, OperationalError, close_old_connections, connections

from ordinaut_site.audit import SYSTEM

from .catalog import tool_servers_refresh_all
from .engine import Next, RetryIn, step_execute

# A database connection that dropped (a Postgres restart) fails the job's first query; the job
# then comes back after a short backoff on a fresh connection, as the same message (same claim).
DB_CONNECTION_ERRORS = (OperationalError, InterfaceError)


@task_prerun.connect
@task_postrun.connect
def _recycle_database_connections(**kwargs: Any) -> None:
    """Around each job, what Django does around each request: keep the connection for
    DB_CONN_MAX_AGE, drop it when it broke. (Celery's own fixup would reconnect for every job;
    settings.CELERY_DB_REUSE_MAX turns that off.) The health-check ping Django would then send
    before the next query is skipped: it costs a round trip per job, and a dead connection is
    handled by retrying the job (DB_CONNECTION_ERRORS)."""
    close_old_connections()
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None:
            setattr(conn, "health_check_done", True)  # noqa: B010 - not in django-stubs


# max_retries=None: the engine counts attempts itself (StepRun.attempts), and waits re-send the
# message too; Celery's own limit would cut both short.
@shared_task(
    bind=True,
    name="pipelines.run_step",
    max_retries=None,
    autoretry_for=DB_CONNECTION_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
)
def run_step_job(self: Any, run_id: str, index: int) -> None:
    outcome = step_execute(run_id=run_id, index=index, claim_id=self.request.id or "")
    if isinstance(outcome, RetryIn):
        # The same message id comes back, so the step's claim (claim_id) still holds; the chain
        # and the run-id stamp travel with it.
        raise self.retry(countdown=outcome.countdown_s)
    if outcome is Next.STOP:
        # Ends the chain here: the rest is either done, owned by another message, or not wanted.
        self.request.chain = None


@shared_task(name="pipelines.refresh_tool_servers", ignore_result=True)
def refresh_tool_servers_job() -> dict[str, str]:
    """Beat's periodic catalog refresh (ORDINAUT_TOOL_REFRESH_INTERVAL_S): every enabled server."""
    return tool_servers_refresh_all(actor=SYSTEM)
