"""Celery jobs of the scheduler: fire one occurrence, record missed occurrences."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import events, services
from .beat import FIRE_BATCH_JOB_NAME, FIRE_JOB_NAME, RECORD_MISSED_JOB_NAME

logger = logging.getLogger(__name__)
FIRE_RETRIES = 20
FIRE_RETRY_COUNTDOWN_S = 5


@shared_task(name=FIRE_JOB_NAME)
def fire_job(task_id: str, scheduled_for: str | None = None) -> None:
    """Beat sends one of these per occurrence, with its nominal time."""
    if not scheduled_for:
        # Only django-celery-beat's stock scheduler sends it bare; Ordinaut's always names the occurrence.
        logger.error("tasks.fire for %s without scheduled_for: run beat with Ordinaut's scheduler", task_id)
        return
    services.task_fire(task_id=task_id, scheduled_for=datetime.fromisoformat(scheduled_for))


@shared_task(bind=True, name=FIRE_BATCH_JOB_NAME, max_retries=FIRE_RETRIES)
def fire_batch_job(self: Any, occurrences: list[list[str]]) -> None:
    """Several occurrences, [task_id, scheduled_for] each: beat groups what falls due together,
    so a burst costs a few messages instead of one per occurrence."""
    again = services.task_fire_batch(occurrences=[(task_id, datetime.fromisoformat(at)) for task_id, at in occurrences])
    if again:
        # The database was away (restart, failover): try those again; the catch-up window decides
        # whether they still run or are recorded as missed.
        raise self.retry(
            kwargs={"occurrences": [[str(t), at.isoformat()] for t, at in again]}, countdown=FIRE_RETRY_COUNTDOWN_S
        )


@shared_task(name=RECORD_MISSED_JOB_NAME)
def record_missed_job(task_id: str, occurrences: list[str]) -> None:
    services.task_record_missed(task_id=task_id, occurrences=[datetime.fromisoformat(o) for o in occurrences])


@shared_task(name="tasks.purge_events", ignore_result=True)
def purge_events_job() -> int:
    """Daily: consumed events older than ORDINAUT_EVENT_RETENTION_DAYS (0: keep them all)."""
    days = settings.ORDINAUT_EVENT_RETENTION_DAYS
    if days <= 0:
        return 0
    return events.events_purge(before=timezone.now() - timedelta(days=days))
