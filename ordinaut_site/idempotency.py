"""Idempotency-Key for POST endpoints: the same key and body replay the first response; another body is a 409.

Use `@idempotent` on a DRF view method (under `@action` when there is one):

    @idempotent
    def create(self, request): ...

MCP tools use `remembered` directly, with the tool's `idempotency_key` argument and the same
store. Keys are per agent and per endpoint (method + path, or the MCP tool). Only a successful (2xx) response is
remembered; a request that failed left nothing behind and may be retried with the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import QueryDict
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from .auth import request_agent
from .errors import Conflict, ValidationFailed
from .models import Agent, IdempotencyRecord

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")  # printable ASCII, no spaces

ViewMethod = Callable[..., Response]


def request_hash(request: Request) -> str:
    """SHA-256 of the request's body and query as canonical JSON (key order and spacing do not count)."""
    data = request.data
    if isinstance(data, QueryDict):
        data = data.dict()
    canonical = json.dumps(
        {"body": data, "query": sorted(request.query_params.lists())},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def endpoint_of(request: Request) -> str:
    # A trailing slash is optional in the API, so "/tasks/" and "/tasks" are one endpoint.
    return f"{request.method} {request.path.rstrip('/') or '/'}"[:300]


def _key_of(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    return key_check(key)


def _claim(*, agent: Agent, key: str, endpoint: str, digest: str) -> tuple[IdempotencyRecord, bool]:
    """(record, True) when this request owns the key now, (record of the earlier request, False) otherwise.

    Must run inside a transaction. A request racing the same key blocks on the unique index until
    the first one commits (then replays its response) or rolls back (then runs itself).
    """
    now = timezone.now()
    lookup = {"agent": agent, "key": key, "endpoint": endpoint}
    # Row lock: a second request must not delete-and-reuse an expired record the first one is reusing.
    existing = IdempotencyRecord.objects.select_for_update().filter(**lookup).first()
    if existing is not None and existing.expires_at <= now:
        existing.delete()
        existing = None
    if existing is None:
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    **lookup,
                    request_hash=digest,
                    expires_at=now + timedelta(seconds=settings.ORDINAUT_IDEMPOTENCY_TTL_S),
                )
            # Opportunistic clean-up of this agent's stale keys; purge_idempotency_keys does the rest.
            IdempotencyRecord.objects.filter(agent=agent, expires_at__lte=now).delete()
            return record, True
        except IntegrityError:
            existing = IdempotencyRecord.objects.select_for_update().get(**lookup)
    return existing, False


class _NotRemembered(Exception):
    """Unwinds `remembered` on an answer that is not a success: its work rolls back, no key is kept."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer


def key_check(key: str, *, field: str = IDEMPOTENCY_HEADER) -> str:
    if not _KEY.match(key):
        raise ValidationFailed.on(field, "must be 1 to 255 printable ASCII characters without spaces")
    return key


def arguments_hash(arguments: Any) -> str:
    """SHA-256 of JSON arguments in canonical form (key order and spacing do not count)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def remembered(
    *,
    agent: Agent,
    key: str,
    endpoint: str,
    digest: str,
    work: Callable[[], tuple[int, Any]],
    field: str = IDEMPOTENCY_HEADER,
) -> tuple[int, Any, bool]:
    """Do `work()` once per (agent, key, endpoint): (status, JSON body, replayed).

    The first call runs `work` (which answers a status and a JSON body) and keeps its answer when
    the status is a success; a later call with the same request digest gets that answer back with
    replayed=True; one with another digest is a Conflict naming `field`. The record and the work
    it stands for commit together (or not at all), so a crash between them cannot leave a key that
    claims work which never happened; work that raises keeps nothing either.
    """
    try:
        with transaction.atomic():
            record, owned = _claim(agent=agent, key=key, endpoint=endpoint, digest=digest)
            if not owned:
                if record.request_hash != digest:
                    over_http = field == IDEMPOTENCY_HEADER
                    where, other = (
                        ("endpoint", "a different request body") if over_http else ("tool", "other arguments")
                    )
                    raise Conflict(
                        f"{field} {record.key!r} was already used on this {where} with {other}.",
                        fields={field: [f"already used with {other}"]},
                    )
                return record.response_status or 200, record.response_body, True
            status, body = work()
            if not 200 <= status < 300:
                raise _NotRemembered((status, body))
            record.response_status = status
            record.response_body = body
            record.save(update_fields=["response_status", "response_body"])
    except _NotRemembered as refused:
        status, body = refused.answer
    return status, body, False


def idempotent(view_method: ViewMethod) -> ViewMethod:
    """Honour the Idempotency-Key header on a DRF view method (see the module docstring)."""

    @wraps(view_method)
    def wrapper(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = _key_of(request)
        if key is None:
            return view_method(view, request, *args, **kwargs)
        responses: list[Response] = []

        def work() -> tuple[int, Any]:
            response = view_method(view, request, *args, **kwargs)
            responses.append(response)
            return response.status_code, json.loads(JSONRenderer().render(response.data) or b"null")

        _status, body, replayed = remembered(
            agent=request_agent(request),
            key=key,
            endpoint=endpoint_of(request),
            digest=request_hash(request),
            work=work,
        )
        if replayed:
            # docs/api.md: the replay answers 200 whatever the first status was (201, 202), with the same body.
            return Response(body, status=200, headers={REPLAYED_HEADER: "true"})
        return responses[0]

    wrapper.idempotent = True  # type: ignore[attr-defined]  # read by the OpenAPI schema (Idempotency-Key header)
    return wrapper


def purge_expired(*, now: Any = None) -> int:
    """Delete expired idempotency records; returns how many."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
