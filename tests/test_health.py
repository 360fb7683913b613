"""/health: the database and Redis decide 200 or 503; the checks the apps register (events
consumer, beat) decide "degraded"; beat's check reports its heartbeat's age and parked tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.test import Client
from django.utils import timezone

from ordinaut_site import health
from tasks.event_consumer import heartbeat_key
from tasks.health import BEAT_SILENT_S
from tasks.models import Task
from tasks.scheduler import beat_heartbeat_key

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def consumer_alive(redis_client: redis.Redis, settings: Any) -> Iterator[None]:
    """An events consumer beats, so that only beat's check is judged here."""
    key = heartbeat_key(settings.ORDINAUT_EVENT_STREAM)
    redis_client.zadd(key, {"health-test": time.time()})
    yield
    redis_client.zrem(key, "health-test")
    redis_client.delete(beat_heartbeat_key())


def _beat(client: Client | None = None) -> tuple[str, dict[str, Any]]:
    body = (client or Client()).get("/health").json()
    return body["status"], body["checks"]["beat"]


def test_a_fresh_beat_heartbeat_is_healthy_and_its_age_reported(redis_client: redis.Redis) -> None:
    redis_client.set(beat_heartbeat_key(), f"{time.time() - 2:.3f}")
    status, beat = _beat()
    assert status == "healthy"
    assert beat["ok"] is True
    assert 2 <= beat["heartbeat_age_s"] < 10
    assert (beat["parked_tasks"], beat["parked"]) == (0, [])


def test_no_heartbeat_or_an_old_one_degrades(redis_client: redis.Redis) -> None:
    redis_client.delete(beat_heartbeat_key())
    response = Client().get("/health")
    assert response.status_code == 200, "a silent beat degrades /health, it does not fail it"
    status, beat = _beat()
    assert (status, beat["ok"], beat["heartbeat_age_s"]) == ("degraded", False, None)
    assert "no beat heartbeat" in beat["error"]

    redis_client.set(beat_heartbeat_key(), f"{time.time() - BEAT_SILENT_S - 5:.3f}")
    status, beat = _beat()
    assert (status, beat["ok"]) == ("degraded", False)
    assert beat["heartbeat_age_s"] > BEAT_SILENT_S


def test_parked_tasks_are_counted_and_listed(redis_client: redis.Redis, make_task: Any) -> None:
    redis_client.set(beat_heartbeat_key(), f"{time.time():.3f}")
    parked, deleted, fine = make_task(), make_task(), make_task()
    now = timezone.now()
    Task.objects.filter(pk__in=[parked.pk, deleted.pk]).update(schedule_error="ValueError: x", schedule_parked_at=now)
    Task.objects.filter(pk=deleted.pk).update(deleted_at=now)
    status, beat = _beat()
    assert (status, beat["ok"], beat["parked_tasks"], beat["parked"]) == ("degraded", False, 1, [str(parked.pk)])
    assert "1 task(s) parked" in beat["error"]
    Task.objects.filter(pk=parked.pk).update(schedule_error="", schedule_parked_at=None)
    assert _beat()[0] == "healthy", f"{fine.title}: tasks that are not parked do not count"


def test_a_registered_check_that_raises_is_reported_not_a_500(redis_client: redis.Redis) -> None:
    redis_client.set(beat_heartbeat_key(), f"{time.time():.3f}")  # beat is fine: only the broken check degrades

    def broken() -> dict[str, Any]:
        raise RuntimeError("check is broken")

    health.register_check("broken-for-test", broken)
    try:
        response = Client().get("/health")
    finally:
        health._registered.pop("broken-for-test")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["broken-for-test"] == {"ok": False, "error": "RuntimeError: check is broken"}


def test_the_database_and_redis_checks_come_first_and_the_apps_register_theirs() -> None:
    body = Client().get("/health").json()
    assert list(body["checks"]) == ["database", "redis", "events_consumer", "beat"]
