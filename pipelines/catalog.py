"""The tool catalog's resolver: `uses: "<server>.<tool>"` of an enabled MCP server, from its Tool rows,
into a call through the MCP client, cached per process for ORDINAUT_TOOL_CACHE_TTL_S.

Registering servers and discovering their tools (`tools/list`) are pipelines.services; reads of
the catalog are pipelines.selectors. A change clears this process's cache at once
(`catalog_cache_clear`); other processes follow within the TTL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from django.conf import settings

from . import mcp_client
from .mcp_client import ServerConfig
from .models import Tool as CatalogTool
from .models import ToolServer
from .tools import BUILTIN_NAMESPACE, Tool, ToolCall

RESERVED_SERVER_NAMES = frozenset({BUILTIN_NAMESPACE})
# A step's call must end before the step's own time limit fires (the engine's soft limit).
STEP_LIMIT_MARGIN_S = 0.5
MIN_CALL_TIMEOUT_S = 0.1


# --- The resolver ---------------------------------------------------------------------------------


def server_config(server: ToolServer) -> ServerConfig:
    return ServerConfig(
        name=server.name,
        transport=server.transport,
        url=server.url,
        command=server.command,
        args=tuple(str(arg) for arg in server.args or []),
        headers_from_env=dict(server.headers_from_env or {}),
        env_from_env=dict(server.env_from_env or {}),
        timeout_s=float(server.timeout_seconds),
        protocol_version=server.protocol_version,
    )


def _as_tool(row: CatalogTool, config: ServerConfig) -> Tool:
    tool_name = row.name

    def call(payload: Any, step: ToolCall) -> Any:
        timeout_s = max(MIN_CALL_TIMEOUT_S, step.timeout_s - STEP_LIMIT_MARGIN_S)
        return mcp_client.tool_call(config, tool_name, payload, timeout_s=timeout_s)

    return Tool(
        name=f"{config.name}.{row.name}",
        description=row.description,
        func=call,
        input_schema=row.input_schema or {},
        output_schema=row.output_schema,
        cost=row.cost,
    )


class McpCatalog:
    """pipelines.tools resolver for the tools of enabled MCP servers, from the Tool rows.

    A found tool is cached per process for ORDINAUT_TOOL_CACHE_TTL_S, so a step does not pay a
    query for the catalog each time; an unknown name is not cached (it fails its step for good,
    and a server registered a moment ago must resolve at once).
    """

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, Tool]] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> Tool | None:
        server_name, _, tool_name = name.partition(".")
        if not tool_name or server_name in RESERVED_SERVER_NAMES:
            return None
        now = time.monotonic()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        row = (
            CatalogTool.objects.select_related("server")
            .filter(server__name=server_name, server__enabled=True, name=tool_name)
            .first()
        )
        if row is None:
            self._cache.pop(name, None)
            return None
        tool = _as_tool(row, server_config(row.server))
        with self._lock:
            self._cache[name] = (now + float(settings.ORDINAUT_TOOL_CACHE_TTL_S), tool)
        return tool

    def tools(self) -> Iterable[Tool]:
        configs: dict[Any, ServerConfig] = {}
        rows = CatalogTool.objects.select_related("server").filter(server__enabled=True)
        return [_as_tool(row, configs.setdefault(row.server_id, server_config(row.server))) for row in rows]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


CATALOG = McpCatalog()


def catalog_cache_clear() -> None:
    """Forget cached catalog tools in this process (other processes follow within the TTL)."""
    CATALOG.clear()
