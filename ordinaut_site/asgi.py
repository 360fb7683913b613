"""ASGI entry point: a small router sending /mcp to Ordinaut's MCP server and everything else to Django."""

from __future__ import annotations

import json
import os
from collections.abc import MutableMapping
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
django_app = get_asgi_application()  # runs django.setup(); import models only after this

from django.conf import settings  # noqa: E402
from django.core import signals  # noqa: E402

from . import logs  # noqa: E402
from .api import error_body  # noqa: E402
from .errors import PayloadTooLarge  # noqa: E402
from .mcp_server import MCP_PATH, mcp, transport_security  # noqa: E402
from .middleware import REQUEST_ID_HEADER, safe_request_id  # noqa: E402

# Stateless: every request stands alone, so any web process (or worker) can answer any request,
# with no session affinity. JSON responses rather than SSE streams: tools answer once, and proxies
# need no streaming support. The same body limit as the API; the Host/Origin allowlist follows
# ALLOWED_HOSTS (see transport_security).
mcp_app = mcp.streamable_http_app(
    streamable_http_path=MCP_PATH,
    stateless_http=True,
    json_response=True,
    max_request_body_size=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
    transport_security=transport_security(list(settings.ALLOWED_HOSTS)),
)


async def _send_too_large(scope: dict[str, Any], send: Any) -> None:
    request_id = safe_request_id(_headers(scope).get(REQUEST_ID_HEADER.lower(), ""))
    error = PayloadTooLarge.over_limit()
    with logs.bind(request_id=request_id):
        body = json.dumps(error_body(error.code, error.message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _declared_too_large(scope: dict[str, Any]) -> bool:
    declared = dict(scope.get("headers", [])).get(b"content-length", b"")
    return declared.isdigit() and int(declared) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE


async def _http_with_body_limit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Django's ASGI handler reads the whole body (spooling to disk) before any middleware runs, so a
    body over ORDINAUT_MAX_BODY_BYTES is refused here: by its Content-Length, or, sent chunked, as soon
    as it grows past the limit (Django is told the client left, and the 413 is sent instead)."""
    if _declared_too_large(scope):
        await _send_too_large(scope, send)
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    received = 0
    cut = False

    async def counting_receive() -> dict[str, Any]:
        nonlocal received, cut
        message: dict[str, Any] = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                cut = True
                return {"type": "http.disconnect"}
        return message

    await django_app(scope, counting_receive, send)
    if cut:
        await _send_too_large(scope, send)


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


async def _mcp(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An MCP request: the API's body limit and X-Request-ID, and Django's per-request connection
    upkeep (the request_started/finished signals close broken or expired database connections)."""
    if _declared_too_large(scope):
        await _send_too_large(scope, send)  # a longer body sent chunked gets the SDK's own 413, same limit
        return
    request_id = safe_request_id(_headers(scope).get(REQUEST_ID_HEADER.lower(), ""))
    # A trailing slash is optional and never redirected, as on the API (the SDK would answer 307).
    scope = {**scope, "path": MCP_PATH, "raw_path": MCP_PATH.encode()}

    async def send_with_request_id(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            message = {**message, "headers": headers}
        await send(message)

    # The tools see the request id (audit rows, logs): the SDK hands this context to the tool call.
    with logs.bind(request_id=request_id):
        await signals.request_started.asend(sender=type(mcp_app), scope=scope)
        try:
            await mcp_app(scope, receive, send_with_request_id)
        finally:
            await signals.request_finished.asend(sender=type(mcp_app))


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        # Django has no lifespan; the MCP app's runs the session manager /mcp needs (uvicorn --lifespan on).
        await mcp_app(scope, receive, send)
        return
    if scope["type"] == "http" and scope["path"] in (MCP_PATH, MCP_PATH + "/"):
        await _mcp(scope, receive, send)
        return
    if scope["type"] == "http":
        await _http_with_body_limit(scope, receive, send)
        return
    await django_app(scope, receive, send)
