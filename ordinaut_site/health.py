"""Health endpoints: /health/live (process), /health/ready (database + Redis), /health (overall).

/health is 503 "unhealthy" when the database or Redis fails; "degraded" (still 200) when only
the events consumer is silent: runs of schedules and run_now go on, event tasks wait for it."""

from __future__ import annotations

import time
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

REDIS_PING_TIMEOUT_S = 2.0


def check_database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 2), "vendor": connection.vendor}


def check_redis() -> dict[str, Any]:
    started = time.monotonic()
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=REDIS_PING_TIMEOUT_S, socket_connect_timeout=REDIS_PING_TIMEOUT_S
        )
        client.ping()
        client.close()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 2)}


def check_events_consumer() -> dict[str, Any]:
    """Is an events consumer (`manage.py consume_events`) alive? Each one beats in Redis every few seconds."""
    from tasks.event_consumer import HEARTBEAT_TTL_S, consumers_alive

    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=REDIS_PING_TIMEOUT_S, socket_connect_timeout=REDIS_PING_TIMEOUT_S
        )
        alive = consumers_alive(client)
        client.close()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if not alive:
        return {"ok": False, "error": f"no events consumer beat in the last {HEARTBEAT_TTL_S}s", "consumers": []}
    return {"ok": True, "consumers": sorted(alive), "last_beat_s": min(alive.values())}


@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "alive"})


@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": check_database(), "redis": check_redis()}
    ok = all(check["ok"] for check in checks.values())
    return JsonResponse({"status": "ready" if ok else "unhealthy", "checks": checks}, status=200 if ok else 503)


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    checks = {"database": check_database(), "redis": check_redis()}
    ok = all(check["ok"] for check in checks.values())
    checks["events_consumer"] = check_events_consumer()
    status = "unhealthy" if not ok else "healthy" if checks["events_consumer"]["ok"] else "degraded"
    return JsonResponse({"status": status, "checks": checks}, status=200 if ok else 503)
