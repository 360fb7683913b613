"""Built-in tools of the `orchestrator` namespace: echo, transform, wait, request_approval, http (tasks/tools.py
adds emit_event, which feeds the events intake)."""

from __future__ import annotations

import fnmatch
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx2
from django.conf import settings
from django.utils import timezone

from ordinaut_site.errors import (
    HostNotAllowed,
    HttpStatusError,
    TemplateFailed,
    ToolInputInvalid,
    ToolOutputTooLarge,
    ToolTimeout,
    ToolUnavailable,
)

from . import netpolicy
from .templates import expr_evaluate
from .tools import AwaitApproval, Suspend, ToolCall, builtin

MAX_WAIT_S = 90 * 86400
MAX_APPROVAL_TIMEOUT_S = 90 * 86400
HTTP_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]
HTTP_USER_AGENT = "Ordinaut/1 (+orchestrator.http)"


@builtin("echo", description="Returns its input unchanged.")
def echo(payload: Any, call: ToolCall) -> Any:
    return payload


@builtin(
    "transform",
    description="Evaluates a JMESPath expression over `data` and returns the result.",
    input_schema={
        "type": "object",
        "properties": {"data": {}, "expression": {"type": "string", "minLength": 1, "maxLength": 2000}},
        "required": ["expression"],
        "additionalProperties": False,
    },
)
def transform(payload: dict[str, Any], call: ToolCall) -> Any:
    try:
        return expr_evaluate(payload["expression"], payload.get("data"))
    except TemplateFailed as exc:
        raise ToolInputInvalid(f"expression: {exc.message}") from None


@builtin(
    "wait",
    description=(
        "Pauses the pipeline for `seconds` or until a time (ISO 8601 with offset). Durable: no worker "
        "sleeps; short waits are a broker countdown, long ones are parked in the database."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "seconds": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
            "until": {"type": "string", "maxLength": 64},
        },
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {"waited_until": {"type": "string"}},
        "required": ["waited_until"],
    },
)
def wait(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    target = call.resume_at or _wait_target(payload)
    if target > timezone.now():
        raise Suspend(target)
    return {"waited_until": target.isoformat()}


def _wait_target(payload: dict[str, Any]) -> datetime:
    if "seconds" in payload:
        return timezone.now() + timedelta(seconds=float(payload["seconds"]))
    try:
        until = datetime.fromisoformat(str(payload["until"]))
    except ValueError:
        raise ToolInputInvalid(f"until: {payload['until']!r} is not an ISO 8601 time") from None
    if until.tzinfo is None:
        raise ToolInputInvalid("until: give a UTC offset (e.g. ${now+2h} or 2026-05-01T09:00:00+03:00)")
    if until - timezone.now() > timedelta(seconds=MAX_WAIT_S):
        raise ToolInputInvalid(f"until: is more than {MAX_WAIT_S // 86400} days away")
    return until.astimezone(UTC)


@builtin(
    "request_approval",
    description=(
        "Puts the run in waiting_approval until a human approves (optionally a subset of `data`) or "
        "rejects it, or timeout_seconds pass. The decision is the output, not an error: {status: "
        "approved|rejected|expired, approved_items, comment, decided_by, decided_at}. After a rejection "
        "or expiry the step's on_reject decides: continue (the default when a later step's `if` tests "
        "the decision) or stop (the default otherwise: the rest is skipped, the run succeeds)."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "message": {"type": "string", "minLength": 1, "maxLength": 2000},
            "data": {},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_APPROVAL_TIMEOUT_S},
        },
        "required": ["message"],
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {
            "status": {"enum": ["approved", "rejected", "expired"]},
            "approved_items": {"type": "array"},
            "decided_by": {"type": ["object", "null"]},
            "comment": {"type": "string"},
            "decided_at": {"type": "string"},
        },
        "required": ["status", "approved_items", "decided_by", "comment", "decided_at"],
    },
)
def request_approval(payload: dict[str, Any], call: ToolCall) -> Any:
    timeout_s = float(payload.get("timeout_seconds") or settings.ORDINAUT_APPROVAL_TIMEOUT_S)
    raise AwaitApproval(message=payload["message"], data=payload.get("data"), timeout_s=timeout_s)


# --- emit_event ------------------------------------------------------------------------------

# --- http ------------------------------------------------------------------------------------


@builtin(
    "http",
    cost=1,
    description=(
        "One HTTP request to a host allowed by ORDINAUT_HTTP_ALLOWED_HOSTS (and, resolved, not to a loopback, "
        "private or link-local address outside ORDINAUT_ALLOWED_PRIVATE_NETWORKS). Redirects are not followed. "
        "5xx, 408, 429, timeouts and connection errors are retried; other 4xx fail the step."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "method": {"enum": HTTP_METHODS},
            "url": {"type": "string", "minLength": 1, "maxLength": 4000},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "query": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
            "json": {},
            "body": {"type": "string"},
            "timeout_seconds": {"type": "number", "exclusiveMinimum": 0},
            "raise_for_status": {"type": "boolean"},
        },
        "required": ["url"],
        "additionalProperties": False,
    },
    output_schema={
        "type": "object",
        "properties": {
            "status": {"type": "integer"},
            "headers": {"type": "object"},
            "json": {},
            "text": {"type": "string"},
        },
        "required": ["status", "headers"],
    },
)
def http(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    url = payload["url"]
    _check_host_allowed(url)
    if "json" in payload and "body" in payload:
        raise ToolInputInvalid("give either json or body, not both")
    timeout_s = min(float(payload.get("timeout_seconds") or call.timeout_s), call.timeout_s)
    deadline = time.monotonic() + timeout_s
    headers = {"User-Agent": HTTP_USER_AGENT, **payload.get("headers", {})}
    request_args: dict[str, Any] = {"headers": headers}
    if payload.get("query"):
        request_args["params"] = {k: _query_value(v) for k, v in payload["query"].items()}
    if "json" in payload:
        request_args["json"] = payload["json"]
    elif "body" in payload:
        request_args["content"] = payload["body"].encode()
    method = payload.get("method", "GET")
    try:
        with (
            httpx2.Client(timeout=timeout_s, follow_redirects=False, transport=netpolicy.guarded_transport()) as client,
            client.stream(method, url, **request_args) as response,
        ):
            body = _read_limited(response, deadline)
    except httpx2.TimeoutException:
        raise ToolTimeout(f"{method} {_safe_url(url)} took longer than {timeout_s:g}s") from None
    except httpx2.TransportError as exc:
        raise ToolUnavailable(f"{method} {_safe_url(url)}: {type(exc).__name__}: {exc}"[:500]) from None
    except httpx2.InvalidURL as exc:
        raise ToolInputInvalid(f"url: {exc}") from None

    result: dict[str, Any] = {"status": response.status_code, "headers": _headers(response)}
    text = body.decode(response.encoding or "utf-8", errors="replace")
    content_type = response.headers.get("content-type", "")
    if "json" in content_type.split(";")[0] and body:
        try:
            result["json"] = json.loads(text)
        except ValueError:
            result["text"] = text
    else:
        result["text"] = text
    if payload.get("raise_for_status", True) and response.status_code >= 400:
        raise HttpStatusError(
            f"{method} {_safe_url(url)} answered {response.status_code}: {text[:200]}", status=response.status_code
        )
    return result


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def host_allowed(url: str) -> bool:
    """Is the URL's host (and port) in ORDINAUT_HTTP_ALLOWED_HOSTS? Only http and https."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    for pattern in settings.ORDINAUT_HTTP_ALLOWED_HOSTS:
        pattern = pattern.strip().lower()
        pattern_host, _, pattern_port = pattern.rpartition(":") if _has_port(pattern) else (pattern, "", "")
        if pattern_port and pattern_port != str(port):
            continue
        pattern_host = pattern_host.strip("[]")
        if pattern_host == "*" or pattern_host == host:
            return True
        if pattern_host.startswith("*.") and fnmatch.fnmatchcase(host, pattern_host) and "." in host:
            return True
    return False


def _has_port(pattern: str) -> bool:
    if pattern.startswith("["):  # [::1]:8080
        return "]:" in pattern
    return pattern.count(":") == 1


def _check_host_allowed(url: str) -> None:
    """The host's name must be allowed (ORDINAUT_HTTP_ALLOWED_HOSTS) and its addresses too (netpolicy:
    no loopback, private, link-local... outside ORDINAUT_ALLOWED_PRIVATE_NETWORKS). The transport
    checks the addresses again at connect and connects to the one it checked."""
    if not host_allowed(url):
        raise HostNotAllowed(
            f"{_safe_url(url)} is not allowed: its host is not in ORDINAUT_HTTP_ALLOWED_HOSTS (or not http/https)"
        )
    parts = urlsplit(url)
    try:
        netpolicy.checked_addresses(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
    except HostNotAllowed as exc:
        raise HostNotAllowed(f"{_safe_url(url)} is not allowed: {exc.message}") from None
    except (socket.gaierror, UnicodeError) as exc:
        raise ToolUnavailable(f"{_safe_url(url)}: cannot resolve {parts.hostname}: {exc}"[:500]) from None


def _safe_url(url: str) -> str:
    """The URL without credentials or query (they may hold secrets), for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"[:300]


def _read_limited(response: httpx2.Response, deadline: float) -> bytes:
    limit = settings.ORDINAUT_HTTP_MAX_RESPONSE_BYTES
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limit:
            raise ToolOutputTooLarge(f"response body is larger than ORDINAUT_HTTP_MAX_RESPONSE_BYTES ({limit})")
        if time.monotonic() > deadline:
            raise httpx2.ReadTimeout("response body took too long")
        chunks.append(chunk)
    return b"".join(chunks)


def _headers(response: httpx2.Response) -> dict[str, str]:
    merged: dict[str, str] = {}
    for name, value in response.headers.multi_items():
        key = name.lower()
        merged[key] = f"{merged[key]}, {value}" if key in merged else value
    return merged
