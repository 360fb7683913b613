"""Celery jobs of the cross-cutting pieces: the hourly purge of expired Idempotency-Key records."""

from __future__ import annotations

from celery import shared_task

from .idempotency import purge_expired


@shared_task(name="ordinaut.purge_idempotency_keys", ignore_result=True)
def purge_idempotency_keys_job() -> int:
    return purge_expired()
