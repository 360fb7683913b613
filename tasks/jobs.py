"""Celery jobs of the scheduler: fire one occurrence, record missed occurrences.

The fire jobs have time limits (ORDINAUT_FIRE_SOFT_TIME_LIMIT_S, ORDINAUT_FIRE_TIME_LIMIT_S), the
backstop behind expression budgets and statement-level bounds: a batch that reaches its soft limit
(its transaction is rolled back, nothing of it fired) is sent again one occurrence per job, so the
slow task is left alone in its job and the others fire; a single occurrence that reaches it is
tried again FIRE_TIME_LIMIT_RETRIES times, then given up with an error in the log. A job killed by
its hard limit is split the same way (FireJob.on_failure, which the worker's main process calls).
Firing is idempotent (one run per trigger key), so sending an occurrence again duplicates nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from ordinaut_site import metrics
from ordinaut_site.jobs import connection_abandon

from . import events, services
from .beat import FIRE_BATCH_JOB_NAME, FIRE_JOB_NAME, RECORD_MISSED_JOB_NAME

logger = logging.getLogger(__name__)
FIRE_RETRIES = 20
FIRE_RETRY_COUNTDOWN_S = 5
# A single occurrence that reached the soft time limit is tried this many more times.
FIRE_TIME_LIMIT_RETRIES = 2


SOFT_TIME_LIMIT_S: int = settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S
TIME_LIMIT_S: int = settings.ORDINAUT_FIRE_TIME_LIMIT_S


class FireJob(Task):  # type: ignore[misc]
    """A fire job killed by its hard time limit: its occurrences are sent again one per job."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if not isinstance(exc, TimeLimitExceeded) or isinstance(exc, SoftTimeLimitExceeded):
            return
        occurrences = (kwargs or {}).get("occurrences") or []
        if len(occurrences) > 1:
            logger.error("%s[%s] killed by its hard time limit; firing its occurrences one by one", self.name, task_id)
            split(occurrences)
        else:
            logger.error("%s[%s] killed by its hard time limit; given up: %s", self.name, task_id, occurrences)


def split(occurrences: list[list[str]]) -> None:
    for occurrence in occurrences:
        fire_batch_job.apply_async(kwargs={"occurrences": [occurrence]})


@shared_task(name=FIRE_JOB_NAME, base=FireJob, soft_time_limit=SOFT_TIME_LIMIT_S, time_limit=TIME_LIMIT_S)
def fire_job(task_id: str, scheduled_for: str | None = None) -> None:
    """Beat sends one of these per occurrence, with its nominal time."""
    if not scheduled_for:
        # Only django-celery-beat's stock scheduler sends it bare; Ordinaut's always names the occurrence.
        logger.error("tasks.fire for %s without scheduled_for: run beat with Ordinaut's scheduler", task_id)
        return
    metrics.occurrences_fired([datetime.fromisoformat(scheduled_for)])
    services.task_fire(task_id=task_id, scheduled_for=datetime.fromisoformat(scheduled_for))


@shared_task(
    bind=True,
    name=FIRE_BATCH_JOB_NAME,
    max_retries=FIRE_RETRIES,
    base=FireJob,
    soft_time_limit=SOFT_TIME_LIMIT_S,
    time_limit=TIME_LIMIT_S,
)
def fire_batch_job(self: Any, occurrences: list[list[str]]) -> None:
    """Several occurrences, [task_id, scheduled_for] each: beat groups what falls due together,
    so a burst costs a few messages instead of one per occurrence."""
    if not self.request.retries:  # an occurrence's lateness is its first attempt's
        metrics.occurrences_fired([datetime.fromisoformat(at) for _, at in occurrences])
    try:
        again = services.task_fire_batch(
            occurrences=[(task_id, datetime.fromisoformat(at)) for task_id, at in occurrences]
        )
    except (SoftTimeLimitExceeded, services.FireBlocked) as exc:
        if isinstance(exc, SoftTimeLimitExceeded):
            # Interrupted mid-statement perhaps: the next job starts on a fresh connection.
            connection_abandon()
        blocked = isinstance(exc, services.FireBlocked)
        why = str(exc) if blocked else f"ran past {settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S}s"
        if len(occurrences) > 1:
            logger.error("firing %d occurrences %s; firing them one per job", len(occurrences), why)
            split(occurrences)
            return
        if self.request.retries < FIRE_TIME_LIMIT_RETRIES:
            logger.error("firing %s %s; trying again", occurrences, why)
            raise self.retry(kwargs={"occurrences": occurrences}, countdown=FIRE_RETRY_COUNTDOWN_S) from None
        logger.error("firing %s %s, %d times; given up", occurrences, why, self.request.retries + 1)
        return
    if again:
        # The database was away (restart, failover): try those again; the catch-up window decides
        # whether they still run or are recorded as missed.
        raise self.retry(
            kwargs={"occurrences": [[str(t), at.isoformat()] for t, at in again]}, countdown=FIRE_RETRY_COUNTDOWN_S
        )


@shared_task(name=RECORD_MISSED_JOB_NAME, soft_time_limit=SOFT_TIME_LIMIT_S, time_limit=TIME_LIMIT_S)
def record_missed_job(task_id: str, occurrences: list[str]) -> None:
    missed = services.task_record_missed(task_id=task_id, occurrences=[datetime.fromisoformat(o) for o in occurrences])
    metrics.occurrences_missed(missed)


@shared_task(name="tasks.purge_events", ignore_result=True)
def purge_events_job() -> int:
    """Daily: consumed events older than ORDINAUT_EVENT_RETENTION_DAYS (0: keep them all)."""
    days = settings.ORDINAUT_EVENT_RETENTION_DAYS
    if days <= 0:
        return 0
    return events.events_purge(before=timezone.now() - timedelta(days=days))
