"""Celery jobs of the pipeline engine: one job per step; a run is a chain of them."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from .engine import Next, step_execute


@shared_task(bind=True, name="pipelines.run_step")
def run_step_job(self: Any, run_id: str, index: int) -> None:
    outcome = step_execute(run_id=run_id, index=index, claim_id=self.request.id or "")
    if outcome is Next.STOP:
        # Ends the chain here: the rest is either done, owned by another message, or not wanted.
        self.request.chain = None
