"""Registering the test MCP servers (tests/support/mcp_servers.py) in the catalog, as operators do."""

from __future__ import annotations

import uuid
from typing import Any

from ordinaut_site.audit import Actor
from pipelines.models import ToolServer
from pipelines.services import tool_server_clean, tool_server_create, tool_server_refresh
from tests.support.mcp_servers import stdio_command

TESTS = Actor.system("tests")


def unique_name(prefix: str = "srv") -> str:
    """A server name no other test uses: processes cache catalog tools by name for a while."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def register_http(url: str, *, name: str | None = None, refresh: bool = True, **fields: Any) -> ToolServer:
    server = tool_server_create(fields=tool_server_clean(name=name or unique_name(), url=url, **fields), actor=TESTS)
    if refresh:
        tool_server_refresh(server=server, actor=TESTS)
    return ToolServer.objects.get(pk=server.pk)


def register_stdio(*, name: str | None = None, refresh: bool = True, **fields: Any) -> ToolServer:
    command, args = stdio_command()
    server = tool_server_create(
        fields=tool_server_clean(name=name or unique_name(), transport="stdio", command=command, args=args, **fields),
        actor=TESTS,
    )
    if refresh:
        tool_server_refresh(server=server, actor=TESTS)
    return ToolServer.objects.get(pk=server.pk)
