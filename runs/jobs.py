"""Celery jobs of runs: the recovery sweeper (beat runs it every ORDINAUT_SWEEP_INTERVAL_S)."""

from __future__ import annotations

from celery import shared_task

from .services import runs_sweep


@shared_task(name="runs.sweep", ignore_result=True)
def sweep_job() -> dict[str, int]:
    return runs_sweep()
