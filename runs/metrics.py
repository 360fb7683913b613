"""The runs app's metrics: runs finished (the run_finished signal) and their durations, the step
job's duration on the workers, and the approvals pending at scrape time (ordinaut_site/metrics.py)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery.signals import task_postrun, task_prerun
from django.db.models import Count, Min
from django.dispatch import receiver
from django.utils import timezone
from prometheus_client.core import Metric

from ordinaut_site import metrics

from .job_names import ITEM_JOB_NAME, STEP_JOB_NAME
from .models import Approval, Run
from .signals import run_finished


@receiver(run_finished, dispatch_uid="runs.metrics.run_finished")
def _run_finished(sender: Any, run: Run, **kwargs: Any) -> None:
    # Sent right after the commit that ended the run: now is its end.
    duration = (timezone.now() - run.started_at).total_seconds() if run.started_at is not None else None
    metrics.run_finished(trigger=run.trigger, status=run.status, duration_s=duration)


def run_started(run: Run) -> None:
    """Call where a run starts (queued -> running, its first step claimed), with `started_at` set:
    counts it, and its first-step lateness when it has a scheduled_for."""
    lateness = None
    if run.started_at is not None and run.scheduled_for is not None:
        lateness = (run.started_at - run.scheduled_for).total_seconds()
    metrics.run_started(trigger=run.trigger, lateness_s=lateness)


def runs_created(runs: Iterable[Run]) -> None:
    """Call after runs are inserted (committed): the skipped ones are finished as they are created,
    and the run_finished signal never sees them."""
    for run in runs:
        if run.status == Run.Status.SKIPPED:
            metrics.run_finished(trigger=run.trigger, status=Run.Status.SKIPPED, duration_s=None)


# A foreach item's job is timed as a step job: it is one call of the step's tool.
TIMED_JOBS = frozenset({STEP_JOB_NAME, ITEM_JOB_NAME})


@task_prerun.connect(weak=False)
def _step_job_started(task: Any = None, **kwargs: Any) -> None:
    if getattr(task, "name", None) in TIMED_JOBS:
        metrics.step_job_begin()


@task_postrun.connect(weak=False)
def _step_job_ended(task: Any = None, **kwargs: Any) -> None:
    if getattr(task, "name", None) in TIMED_JOBS:
        metrics.step_job_end()


def approvals_state() -> Iterator[Metric]:
    """One aggregate over the pending approvals (index on status)."""
    waiting = Approval.objects.filter(status=Approval.Status.PENDING)
    pending = waiting.aggregate(count=Count("id"), oldest=Min("created_at"))
    oldest = pending["oldest"]
    yield metrics.gauge("ordinaut_approvals_pending", "Approvals waiting for a decision.", pending["count"])
    yield metrics.gauge(
        "ordinaut_approvals_oldest_pending_age_seconds",
        "How long the oldest pending approval has waited (0: none pending).",
        (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0,
    )


metrics.source_register("approvals", approvals_state)
