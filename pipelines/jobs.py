"""Celery jobs of the pipeline engine: one job per step; a run is a chain of them."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .engine import Next, RetryIn, step_execute


# max_retries=None: the engine counts attempts itself (StepRun.attempts), and waits re-send the
# message too; Celery's own limit would cut both short.
@shared_task(bind=True, name="pipelines.run_step", max_retries=None)
def run_step_job(self: Any, run_id: str, index: int) -> None:
    outcome = step_execute(run_id=run_id, index=index, claim_id=self.request.id or "")
    if isinstance(outcome, RetryIn):
        # The same message id comes back, so the step's claim (claim_id) still holds; the chain
        # and the run-id stamp travel with it.
        raise self.retry(countdown=outcome.countdown_s)
    if outcome is Next.STOP:
        # Ends the chain here: the rest is either done, owned by another message, or not wanted.
        self.request.chain = None
