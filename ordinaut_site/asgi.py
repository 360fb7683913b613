"""ASGI entry point: a small router in front of Django (the MCP endpoint /mcp mounts here later)."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
django_app = get_asgi_application()  # runs django.setup(); import models only after this


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
    await django_app(scope, receive, send)
