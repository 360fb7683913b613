"""Celery jobs of runs: the step job (a run is a chain of them, one per step), the item job (one
item of a foreach step), and the recovery sweeper (beat runs it every ORDINAUT_SWEEP_INTERVAL_S)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from .engine import Next, Outcome, RetryIn, step_execute
from .fanout import item_execute
from .services import ITEM_JOB_NAME, STEP_JOB_NAME, retention_cutoff, runs_purge, runs_sweep

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
    outcome = step_execute(run_id=run_id, index=index, claim_id=self.request.id or "", timeout_s=_soft_limit(self))
    _follow(self, outcome)


def _soft_limit(job: Any) -> float | None:
    """The step's timeout as its message carries it (run_dispatch sends each step with it as the
    soft time limit; a retry keeps it); None when it has none."""
    limits = job.request.timelimit or (None, None)
    soft = limits[1] if len(limits) > 1 else None
    return float(soft) if isinstance(soft, int | float) and soft > 0 else None


# An item job is a link of one lane (a chain) of a foreach step's items; the same rules.
@shared_task(
    bind=True,
    name=ITEM_JOB_NAME,
    max_retries=None,
    autoretry_for=DB_CONNECTION_ERRORS,
    retry_backoff=True,
    retry_backoff_max=60,
)
def run_item_job(self: Any, run_id: str, index: int, item_index: int) -> None:
    _follow(self, item_execute(run_id=run_id, index=index, item_index=item_index, claim_id=self.request.id or ""))


def _follow(job: Any, outcome: Outcome) -> None:
    if isinstance(outcome, RetryIn):
        # The same message id comes back, so the claim (claim_id) still holds; the chain and the
        # run-id stamp travel with it.
        raise job.retry(countdown=outcome.countdown_s)
    if outcome is Next.STOP:
        # Ends the chain here: the rest is either done, owned by another message, or not wanted.
        job.request.chain = None


@shared_task(name="runs.sweep", ignore_result=True)
def sweep_job() -> dict[str, int]:
    return runs_sweep()


@shared_task(name="runs.purge", ignore_result=True)
def purge_runs_job() -> int:
    """Daily: finished runs older than ORDINAUT_RUN_RETENTION_DAYS (0: keep them all)."""
    before = retention_cutoff()
    return runs_purge(before=before) if before is not None else 0
