"""Rate limits: per agent (and per IP without a valid token), a tighter one for writes; 429 + Retry-After."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from rest_framework.test import APIClient

from ordinaut_site import throttling
from ordinaut_site.settings import env_rate
from ordinaut_site.throttling import parse_rate

pytestmark = pytest.mark.django_db
# Windows are fixed and aligned to the clock: tests use day-long ones, and the throttles' clock
# stands at noon, so no window rolls over mid-test (one did at midnight UTC before).
DAY_S = 86400
NOON_S = 1767268800.0  # 2026-01-01T12:00:00Z


@pytest.fixture(autouse=True)
def clock_at_noon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttling, "time", SimpleNamespace(time=lambda: NOON_S))


def assert_rate_limited(response: Any, period_s: int) -> None:
    assert response.status_code == 429
    body = response.json()
    assert body["error"]["code"] == "rate_limited"
    assert body["request_id"] == response["X-Request-ID"]
    assert 1 <= int(response["Retry-After"]) <= period_s
    assert "WWW-Authenticate" not in response


@override_settings(ORDINAUT_RATE_LIMIT="3/day")
def test_agent_over_its_rate_gets_429_with_retry_after(agent: Any) -> None:
    for _ in range(3):
        assert agent.client.get("/agents/me").status_code == 200
    assert_rate_limited(agent.client.get("/agents/me"), DAY_S)


@override_settings(ORDINAUT_RATE_LIMIT="3/day")
def test_limits_are_per_agent_not_per_ip(make_agent: Any) -> None:
    busy, quiet = make_agent(), make_agent()
    for _ in range(4):
        busy.client.get("/agents/me")
    assert busy.client.get("/agents/me").status_code == 429
    assert quiet.client.get("/agents/me").status_code == 200


@override_settings(ORDINAUT_RATE_LIMIT="100/day", ORDINAUT_WRITE_RATE_LIMIT="2/day")
def test_writes_have_their_own_tighter_limit(make_agent: Any) -> None:
    writer = make_agent(scopes=["agents:admin"])
    tokens = f"/agents/{writer.agent.pk}/tokens"
    assert writer.client.post(tokens, {}).status_code == 201
    assert writer.client.post(tokens, {}).status_code == 201

    assert_rate_limited(writer.client.post(tokens, {}), DAY_S)
    assert writer.client.get(tokens).status_code == 200, "reads still pass"


@override_settings(ORDINAUT_ANON_RATE_LIMIT="2/day")
def test_requests_without_a_token_are_limited_per_ip() -> None:
    client = APIClient(REMOTE_ADDR="10.1.2.3")
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert_rate_limited(client.get("/openapi.json"), DAY_S)
    assert APIClient(REMOTE_ADDR="10.9.9.9").get("/openapi.json").status_code == 200


# DRF authenticates before it throttles: requests with no token or a bad one were never counted.
@override_settings(ORDINAUT_ANON_RATE_LIMIT="3/day")
def test_requests_with_no_token_or_a_bad_one_are_limited_per_ip() -> None:
    def client(ip: str, authorization: str | None = None) -> APIClient:
        api = APIClient(REMOTE_ADDR=ip)
        if authorization:
            api.credentials(HTTP_AUTHORIZATION=authorization)
        return api

    assert client("10.1.2.3").get("/agents/me").status_code == 401
    assert client("10.1.2.3", "Bearer ord_zzzzzzzz_not-a-token").get("/tasks").status_code == 401
    assert client("10.1.2.3", "Token abc").post("/tasks", {}, format="json").status_code == 401

    assert_rate_limited(client("10.1.2.3", "Bearer ord_zzzzzzzz_another-guess").get("/tasks"), DAY_S)
    assert_rate_limited(client("10.1.2.3").get("/openapi.json"), DAY_S)
    assert client("10.9.9.9").get("/agents/me").status_code == 401


@override_settings(ORDINAUT_ANON_RATE_LIMIT="1/day")
def test_a_valid_token_from_a_spent_ip_is_counted_per_agent(agent: Any) -> None:
    APIClient(REMOTE_ADDR="10.1.2.3").get("/agents/me")
    assert APIClient(REMOTE_ADDR="10.1.2.3").get("/agents/me").status_code == 429

    agent.client.defaults["REMOTE_ADDR"] = "10.1.2.3"
    assert agent.client.get("/agents/me").status_code == 200


@override_settings(ORDINAUT_RATE_LIMIT="off")
def test_off_disables_the_limit(agent: Any) -> None:
    for _ in range(5):
        assert agent.client.get("/agents/me").status_code == 200


@override_settings(
    ORDINAUT_RATE_LIMIT="1/day",
    CACHES={"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}},
)
def test_unreachable_redis_fails_open(agent: Any) -> None:
    assert agent.client.get("/agents/me").status_code == 200
    assert agent.client.get("/agents/me").status_code == 200


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("600/min", (600, 60)), ("20/s", (20, 1)), ("1000/hour", (1000, 3600)), ("100/10s", (100, 10)), ("off", None)],
)
def test_rate_syntax(text: str, parsed: tuple[int, int] | None) -> None:
    assert parse_rate(text) == parsed


@pytest.mark.parametrize("text", ["600", "600/fortnight", "many/min", "0/min", "5/0s"])
def test_bad_rates_are_refused_at_start(monkeypatch: Any, text: str) -> None:
    monkeypatch.setenv("ORDINAUT_RATE_LIMIT", text)
    with pytest.raises(ImproperlyConfigured):
        env_rate("ORDINAUT_RATE_LIMIT", "600/min")


def test_a_window_counter_is_one_redis_key_with_the_windows_lifetime(redis_client: Any) -> None:
    from django.core.cache import cache

    identity = "agent:counter-test"
    assert throttling.window_wait("all", identity, "3/min") is None
    assert throttling.window_wait("all", identity, "3/min") is None

    key = f"{throttling.THROTTLE_KEY_PREFIX}:all:{identity}:60:{int(NOON_S // 60)}"
    assert cache.get(key) == 2, "Django's cache reads the counter"
    ttl = redis_client.ttl(cache.make_key(key))
    assert 0 < ttl <= 61, "a new window's key expires after the window (and the second count kept it)"
    assert throttling.window_wait("all", identity, "3/min") is None
    assert throttling.window_wait("all", identity, "3/min") == pytest.approx(60 - NOON_S % 60)
