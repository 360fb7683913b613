"""Health endpoints: /health/live (process), /health/ready (database + Redis), /health (overall).

/health is 503 "unhealthy" when the database or Redis fails. The apps add their own checks with
`register_check` (from their AppConfig.ready); one of those failing makes /health "degraded"
(still 200): runs of what still works go on. This module imports no app."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

REDIS_PING_TIMEOUT_S = 2.0

HealthCheck = Callable[[], dict[str, Any]]
# name -> check, in registration order; each returns {"ok": bool, ...} (and "error" when not ok).
_registered: dict[str, HealthCheck] = {}


def register_check(name: str, check: HealthCheck) -> None:
    """Report `check()` under `name` in /health; registering a name again replaces its check."""
    _registered[name] = check


def health_redis() -> redis.Redis:
    """A Redis client with the health checks' short timeouts (the caller closes it)."""
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=REDIS_PING_TIMEOUT_S, socket_connect_timeout=REDIS_PING_TIMEOUT_S
    )


def _failed(exc: Exception) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def check_database() -> dict[str, Any]:
    started = time.monotonic()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failed(exc)
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 2), "vendor": connection.vendor}


def check_redis() -> dict[str, Any]:
    started = time.monotonic()
    try:
        client = health_redis()
        client.ping()
        client.close()
    except Exception as exc:
        return _failed(exc)
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 2)}


def _run(check: HealthCheck) -> dict[str, Any]:
    try:
        return check()
    except Exception as exc:  # a broken check reports itself, it does not break /health
        return _failed(exc)


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
    registered = {name: _run(check) for name, check in _registered.items()}
    checks.update(registered)
    status = "unhealthy" if not ok else "healthy" if all(c["ok"] for c in registered.values()) else "degraded"
    return JsonResponse({"status": status, "checks": checks}, status=200 if ok else 503)
