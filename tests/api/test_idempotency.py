"""Idempotency-Key: the same key and body replay the first response (200); another body is a 409.

Exercised on a small test-only endpoint that records each execution in the audit log, so the
tests count real executions; the same decorator serves POST /tasks, run_now and /events.
"""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import include, path, re_path
from django.utils import timezone
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.auth import request_agent
from ordinaut_site.idempotency import idempotent
from ordinaut_site.models import AuditLog, IdempotencyRecord
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.api.test_idempotency")]

ACTION = "test.idempotent"
# Set by the concurrency test: the view signals it entered, then waits until released.
ENTERED = threading.Event()
RELEASE = threading.Event()


class ThingSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=50)
    hold = serializers.BooleanField(default=False)


class ThingsView(APIView):
    required_scope = "tasks:write"

    @idempotent
    def post(self, request: Request, group: str) -> Response:
        body = ThingSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if body.validated_data["hold"]:
            ENTERED.set()
            RELEASE.wait(timeout=60)
        thing_id = str(uuid.uuid4())
        audit_record(actor=Actor.of_agent(request_agent(request)), action=ACTION, subject_id=thing_id)
        return Response({"id": thing_id, "group": group, "name": body.validated_data["name"]}, status=201)


urlpatterns = [
    re_path(r"^things/(?P<group>[a-z]+)/?$", ThingsView.as_view()),
    path("", include("ordinaut_site.urls")),
]


def executions() -> int:
    return AuditLog.objects.filter(action=ACTION).count()


def post(handle: Any, body: dict[str, Any], key: str | None = "key-1", group: str = "a") -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return handle.client.post(f"/things/{group}", body, **headers)


def test_same_key_and_body_replays_the_first_response(agent: Any) -> None:
    first = post(agent, {"name": "x"})
    again = post(agent, {"name": "x"})

    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert executions() == 1


def test_key_order_and_spacing_of_the_body_do_not_matter(agent: Any) -> None:
    first = agent.client.post("/things/a", b'{"name": "x", "hold": false}', content_type="application/json",
                              HTTP_IDEMPOTENCY_KEY="k")  # fmt: skip
    again = agent.client.post("/things/a", b'{"hold":false,"name":"x"}', content_type="application/json",
                              HTTP_IDEMPOTENCY_KEY="k")  # fmt: skip
    assert (first.status_code, again.status_code) == (201, 200)
    assert executions() == 1


def test_same_key_with_another_body_is_409(agent: Any) -> None:
    post(agent, {"name": "x"})
    response = post(agent, {"name": "y"})

    assert response.status_code == 409
    body = response.json()
    assert body["error"]["code"] == "conflict"
    assert "Idempotency-Key" in body["error"]["fields"]
    assert body["request_id"] == response["X-Request-ID"]
    assert executions() == 1


def test_without_a_key_every_request_runs(agent: Any) -> None:
    post(agent, {"name": "x"}, key=None)
    post(agent, {"name": "x"}, key=None)
    assert executions() == 2
    assert IdempotencyRecord.objects.count() == 0


def test_keys_are_per_agent(make_agent: Any) -> None:
    one, two = make_agent(), make_agent()
    assert post(one, {"name": "x"}).status_code == 201
    assert post(two, {"name": "x"}).status_code == 201
    assert executions() == 2


def test_keys_are_per_endpoint(agent: Any) -> None:
    assert post(agent, {"name": "x"}, group="a").status_code == 201
    assert post(agent, {"name": "x"}, group="b").status_code == 201
    assert post(agent, {"name": "x"}, group="a").status_code == 200
    assert executions() == 2


def test_trailing_slash_is_the_same_endpoint(agent: Any) -> None:
    assert post(agent, {"name": "x"}).status_code == 201
    again = agent.client.post("/things/a/", {"name": "x"}, HTTP_IDEMPOTENCY_KEY="key-1")
    assert again.status_code == 200
    assert executions() == 1


def test_a_failed_request_is_not_remembered(agent: Any) -> None:
    bad = post(agent, {"name": ""})
    assert bad.status_code == 400
    assert IdempotencyRecord.objects.count() == 0

    good = post(agent, {"name": "fixed"})
    assert good.status_code == 201
    assert executions() == 1


def test_an_expired_key_runs_again(agent: Any) -> None:
    first = post(agent, {"name": "x"})
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    again = post(agent, {"name": "x"})

    assert again.status_code == 201
    assert again.json()["id"] != first.json()["id"]
    assert executions() == 2
    assert IdempotencyRecord.objects.count() == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "naïve"])
def test_malformed_key_is_400(agent: Any, key: str) -> None:
    response = agent.client.post("/things/a", {"name": "x"}, HTTP_IDEMPOTENCY_KEY=key.encode().decode("latin-1"))
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]
    assert executions() == 0


def test_scope_and_authentication_come_first(make_agent: Any, agent: Any) -> None:
    reader = make_agent(scopes=["tasks:read"])
    assert post(reader, {"name": "x"}).status_code == 403
    assert post(agent, {"name": "x"}).status_code == 201, "the 403 left no record behind"


def test_purge_command_deletes_only_expired_records(agent: Any) -> None:
    post(agent, {"name": "x"}, key="old")
    post(agent, {"name": "x"}, key="fresh")
    IdempotencyRecord.objects.filter(key="old").update(expires_at=timezone.now() - timedelta(seconds=1))

    out = StringIO()
    call_command("purge_idempotency_keys", stdout=out)

    assert "Deleted 1" in out.getvalue()
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["fresh"]


def test_beat_purges_expired_records_hourly(agent: Any) -> None:
    from django.conf import settings

    from ordinaut_site.jobs import purge_idempotency_keys_job

    entry = settings.CELERY_BEAT_SCHEDULE["ordinaut.purge_idempotency_keys"]
    assert entry["task"] == purge_idempotency_keys_job.name
    post(agent, {"name": "x"}, key="old")
    IdempotencyRecord.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert purge_idempotency_keys_job() == 1
    assert IdempotencyRecord.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_two_racing_requests_with_one_key_execute_once(agent: Any) -> None:
    """The second request waits on the first one's uncommitted key, then replays its response."""
    ENTERED.clear()
    RELEASE.clear()
    responses: dict[str, Any] = {}

    def send(name: str) -> None:
        try:
            responses[name] = post(agent, {"name": "x", "hold": True})
        finally:
            connection.close()

    first = threading.Thread(target=send, args=("first",))
    first.start()
    try:
        assert ENTERED.wait(timeout=60), "the first request never reached the view"
        second = threading.Thread(target=send, args=("second",))
        second.start()
        wait_for(_a_lock_is_awaited, timeout=60, message="the second request to wait on the first one's key")
    finally:
        RELEASE.set()
    first.join(timeout=60)
    second.join(timeout=60)

    statuses = sorted(r.status_code for r in responses.values())
    assert statuses == [200, 201]
    assert responses["first"].json() == responses["second"].json()
    assert executions() == 1


def _a_lock_is_awaited() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
        return bool(cursor.fetchone()[0])
