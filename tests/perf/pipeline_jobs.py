"""Baseline jobs for B1/B2: a bare Celery chain of no-ops whose last link says it finished."""

from __future__ import annotations

import time

import redis
from celery import shared_task
from django.conf import settings

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(settings.REDIS_URL)
    return _client


@shared_task(name="bench.noop")
def noop() -> None:
    return None


@shared_task(name="bench.chain_done")
def chain_done(key: str) -> None:
    """The last link: count the finished chain and note when (one Redis round trip)."""
    _redis().pipeline().incr(f"{key}:count").set(f"{key}:last", f"{time.time():.6f}").execute()
