"""Health endpoints: /health/live (process), /health/ready (database + Redis), /health (overall)."""

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
    return JsonResponse({"status": "healthy" if ok else "unhealthy", "checks": checks}, status=200 if ok else 503)
