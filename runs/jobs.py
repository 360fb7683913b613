"""Celery jobs of runs: the step job (a run is a chain of them, one per step) and the recovery
sweeper (beat runs it every ORDINAUT_SWEEP_INTERVAL_S)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .engine import Next, RetryIn, step_execute
from .services import STEP_JOB_NAME, retention_cutoff, runs_purge, runs_sweep

# A database connection that dropped (a Postgres restart) fails the job's first query; the job
# then comes back after a short backoff on a fresh connection, as the same message (same claim).
DB_CONNECTION_ERRORS = (OperationalError, InterfaceError)


# max_retries=None: the engine counts attempts itself (StepRun.attempts), and waits re-send the
# message too; Celery's own limit would cut both short.
@shared_task(
    bind=True,
    name=STEP_JOB_NAME,
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


@shared_task(name="runs.sweep", ignore_result=True)
def sweep_job() -> dict[str, int]:
    return runs_sweep()


@shared_task(name="runs.purge", ignore_result=True)
def purge_runs_job() -> int:
    """Daily: finished runs older than ORDINAUT_RUN_RETENTION_DAYS (0: keep them all)."""
    before = retention_cutoff()
    return runs_purge(before=before) if before is not None else 0
