"""A bare Celery app for the B1/B2 baselines: no Django, no Ordinaut signal handlers, and the worker
settings Ordinaut ships (acks late, prefetch 1, JSON, no results, the same broker options), so the
baseline is the fastest chain Celery itself manages under those settings.

BARE_EVENTS=1 (default) sends task events as Ordinaut's workers do (Flower needs them); BARE_EVENTS=0
is the floor without them. BARE_QUEUE names the queue; REDIS_URL the broker.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/9")

# Not the current app: the benchmark process imports this beside Ordinaut's own app, whose jobs
# (sent through current_app) must keep going to its own queues.
app = Celery("bare", broker=REDIS_URL, set_as_current=False)
app.conf.update(
    task_default_queue=os.environ.get("BARE_QUEUE", "bare"),
    broker_connection_retry_on_startup=True,
    broker_transport_options={
        "visibility_timeout": int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_S", "3600")),
        "queue_order_strategy": "priority",
    },
    task_acks_late=True,
    task_acks_on_failure_or_timeout=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=os.environ.get("BARE_EVENTS", "1") == "1",
    task_send_sent_event=False,
)

_client: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(REDIS_URL)
    return _client


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.chain_done")
def chain_done(key: str) -> None:
    """The last link: count the finished chain and note when (one Redis round trip)."""
    _redis().pipeline().incr(f"{key}:count").set(f"{key}:last", f"{time.time():.6f}").execute()
