"""Rate limits per agent, and per client IP without a valid token: fixed windows in Redis (429 + Retry-After)."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework import throttling
from rest_framework.request import Request

from . import metrics
from .models import Agent

logger = logging.getLogger(__name__)

THROTTLE_KEY_PREFIX = "throttle"
_PERIODS_S = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_OFF = {"", "0", "off", "none", "unlimited"}
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def parse_rate(rate: str) -> tuple[int, int] | None:
    """Rate text to (count, period seconds): 600/min -> (600, 60); 100/10s -> (100, 10); off -> None."""
    text = rate.strip().lower()
    if text in _OFF:
        return None
    try:
        count_text, period_text = text.split("/", 1)
        count = int(count_text)
        digits = "".join(c for c in period_text if c.isdigit())
        unit = period_text[len(digits) :].strip()
        period = int(digits or 1) * _PERIODS_S[unit]
    except (ValueError, KeyError):
        raise ValueError(f"rate {rate!r} is not like '600/min', '20/s', '1000/h', '100/10s' or 'off'") from None
    if count < 1 or period < 1:
        raise ValueError(f"rate {rate!r} must allow at least one request per period")
    return count, period


def window_wait(scope: str, identity: str, rate_text: str) -> float | None:
    """Count one request of `identity` against `rate_text` ('600/min', 'off', ...) in the fixed
    window of its period: None while the window has room, else the seconds until the next window.

    A Redis INCR per request (atomic across web processes, O(1); see _count), where DRF's SimpleRateThrottle
    rewrites a list of timestamps. A burst can reach 2N across a window edge; that is accepted.
    Redis being down fails open (logged): a rate limit must not take the API down with it.
    """
    rate = parse_rate(rate_text)
    if rate is None:
        return None
    count, period = rate
    now = time.time()
    window = int(now // period)
    key = f"{THROTTLE_KEY_PREFIX}:{scope}:{identity}:{period}:{window}"
    try:
        used = _count(key, timeout=period + 1)
    except Exception:
        logger.warning("rate limit check failed; allowing the request", exc_info=True)
        return None
    if used <= count:
        return None
    metrics.rate_limited("writes" if scope == "write" else "anonymous" if identity.startswith("ip:") else "requests")
    return (window + 1) * period - now


def _count(key: str, *, timeout: int) -> int:
    """Add one to the window's counter and return it. On Redis one round trip: INCR (which creates the
    key at 1) and EXPIRE NX (a lifetime for a new key, none changed); Django's cache.add + cache.incr
    took three (SET NX, EXISTS, INCR), six per write request with both limits on (B4)."""
    client_of = getattr(getattr(cache, "_cache", None), "get_client", None)
    if client_of is None:  # not Django's Redis cache
        cache.add(key, 0, timeout=timeout)
        return int(cache.incr(key))
    full_key = cache.make_and_validate_key(key)
    pipe = client_of(full_key, write=True).pipeline(transaction=False)
    pipe.incr(full_key)
    pipe.expire(full_key, timeout, nx=True)
    used, _ = pipe.execute()
    return int(used)


def agent_wait(agent: Agent, *, writes: bool) -> float | None:
    """The per-agent limits of a call that is not an HTTP request (an MCP tool): ORDINAUT_RATE_LIMIT,
    and ORDINAUT_WRITE_RATE_LIMIT too when it changes something. Counted in the same windows as the
    REST API's, so REST and MCP share one budget. None, or the seconds to wait."""
    identity = f"agent:{agent.pk}"
    wait = window_wait(AgentRateThrottle.scope, identity, settings.ORDINAUT_RATE_LIMIT)
    if wait is None and writes:
        wait = window_wait(AgentWriteRateThrottle.scope, identity, settings.ORDINAUT_WRITE_RATE_LIMIT)
    return wait


class WindowThrottle(throttling.BaseThrottle):
    """At most N requests per fixed window of P seconds per identity (see window_wait)."""

    scope = ""

    def __init__(self) -> None:
        self.wait_s: float | None = None

    def limit_for(self, request: Request) -> tuple[str, str] | None:
        """(identity, rate setting's value) for this request, or None when this throttle does not apply."""
        raise NotImplementedError

    def allow_request(self, request: Request, view: Any) -> bool:
        found = self.limit_for(request)
        if found is None:
            return True
        identity, rate_text = found
        self.wait_s = window_wait(self.scope, identity, rate_text)
        return self.wait_s is None

    def wait(self) -> float | None:
        return self.wait_s


def _client_ip(request: Request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is client-controlled unless a proxy we trust rewrites it.
    return str(request.META.get("REMOTE_ADDR") or "unknown")


class ClientIpRateThrottle(WindowThrottle):
    """ORDINAUT_ANON_RATE_LIMIT per client IP: the requests AgentRateThrottle counts without a token."""

    scope = "all"

    def limit_for(self, request: Request) -> tuple[str, str] | None:
        return f"ip:{_client_ip(request)}", settings.ORDINAUT_ANON_RATE_LIMIT


def unauthenticated_wait(request: Request) -> float | None:
    """Count a request refused for want of a valid token (401) against its client IP's
    ORDINAUT_ANON_RATE_LIMIT; the seconds to wait when that is spent, else None.

    DRF authenticates and checks permissions before it throttles, so a request with a missing or
    bad token never reached the throttles: anyone could send (or try tokens) without limit.
    The API's exception handler calls this on every 401 and answers 429 instead when spent.
    """
    throttle = ClientIpRateThrottle()
    if throttle.allow_request(request, None):
        return None
    return throttle.wait() or 1.0


class AgentRateThrottle(WindowThrottle):
    """Every request: ORDINAUT_RATE_LIMIT per agent, or ORDINAUT_ANON_RATE_LIMIT per IP without a token."""

    scope = "all"

    def limit_for(self, request: Request) -> tuple[str, str] | None:
        agent = request.user
        if isinstance(agent, Agent):
            return f"agent:{agent.pk}", settings.ORDINAUT_RATE_LIMIT
        return ClientIpRateThrottle().limit_for(request)


class AgentWriteRateThrottle(WindowThrottle):
    """Writes (POST, PATCH, PUT, DELETE) of an agent: ORDINAUT_WRITE_RATE_LIMIT, on top of the above."""

    scope = "write"

    def limit_for(self, request: Request) -> tuple[str, str] | None:
        agent = request.user
        if request.method in _SAFE_METHODS or not isinstance(agent, Agent):
            return None
        return f"agent:{agent.pk}", settings.ORDINAUT_WRITE_RATE_LIMIT
