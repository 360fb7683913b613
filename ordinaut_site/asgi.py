"""ASGI entry point: a small router in front of Django (the MCP endpoint /mcp mounts here later)."""

from __future__ import annotations

import json
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
django_app = get_asgi_application()  # runs django.setup(); import models only after this

from django.conf import settings  # noqa: E402

from . import logs  # noqa: E402
from .api import error_body  # noqa: E402
from .errors import PayloadTooLarge  # noqa: E402
from .middleware import REQUEST_ID_HEADER, safe_request_id  # noqa: E402


async def _send_too_large(scope: dict[str, Any], send: Any) -> None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    request_id = safe_request_id(headers.get(REQUEST_ID_HEADER.lower(), ""))
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


async def _http_with_body_limit(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Django's ASGI handler reads the whole body (spooling to disk) before any middleware runs, so a
    body over ORDINAUT_MAX_BODY_BYTES is refused here: by its Content-Length, or, sent chunked, as soon
    as it grows past the limit (Django is told the client left, and the 413 is sent instead)."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = dict(scope.get("headers", [])).get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        await _send_too_large(scope, send)
        return
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


async def _lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    # Django cannot answer lifespan events; acknowledge them so servers run with --lifespan on.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(scope, receive, send)
        return
    if scope["type"] == "http":
        await _http_with_body_limit(scope, receive, send)
        return
    await django_app(scope, receive, send)
