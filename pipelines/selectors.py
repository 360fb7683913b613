"""Reads of the tool catalog: registered tool servers, and every tool a step can use."""

from __future__ import annotations

from django.db.models import Count, QuerySet

from ordinaut_site.errors import (
    NotFound,
)

from .models import ToolServer
from .tools import Tool, tool_find, tool_list

# --- Tool servers and tools ------------------------------------------------------------------------------------


def tool_server_list() -> QuerySet[ToolServer]:
    return ToolServer.objects.annotate(tool_count=Count("tools")).order_by("-created_at", "name")


def tool_server_get(*, name: str) -> ToolServer:
    server = tool_server_list().filter(name=name).first()
    if server is None:
        raise NotFound(f"No tool server named {name[:100]!r}.")
    return server


def catalog_tools(*, server: str | None = None, search: str | None = None) -> list[Tool]:
    """Every tool a step can use: built-ins, Python tools and the MCP catalog (by name)."""
    tools = tool_list()
    if server:
        tools = [tool for tool in tools if tool.server == server]
    if search:
        needle = search.lower()
        tools = [tool for tool in tools if needle in tool.name.lower() or needle in tool.description.lower()]
    return tools


def catalog_tool_get(*, name: str) -> Tool:
    tool = tool_find(name) if "." in name else None
    if tool is None:
        raise NotFound(f"No tool named {name[:200]!r}.")
    return tool
