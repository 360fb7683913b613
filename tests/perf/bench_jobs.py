"""A recorder job for benchmark baselines: notes which periodic task fired, and when."""

from __future__ import annotations

import time
from typing import Any

import redis
from celery import shared_task
from django.conf import settings

RECORD_KEY = "bench:b3:fires"


@shared_task(name="bench.record_fire")
def record_fire(task_id: str = "", **kwargs: Any) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.rpush(RECORD_KEY, f"{task_id}|{time.time():.6f}")
