"""Fixtures of the MCP tool tests: agents that call tools in process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from mcp.types import CallToolResult

from tests.mcp.calls import call_tool, structured, tool_error


@dataclass
class ToolCaller:
    """Tools called as one agent: `ok()` returns the structured result, `error()` the error body."""

    handle: Any  # tests.conftest.AgentHandle, or None for a call without credentials

    def __call__(self, tool: str, **arguments: Any) -> CallToolResult:
        return call_tool(self.handle.token if self.handle else None, tool, arguments)

    def ok(self, tool: str, **arguments: Any) -> Any:
        return structured(self(tool, **arguments))

    def error(self, tool: str, **arguments: Any) -> dict[str, Any]:
        return tool_error(self(tool, **arguments), tool)["error"]


@pytest.fixture
def tools(agent: Any) -> ToolCaller:
    """The default test agent (every scope but admin) calling tools."""
    return ToolCaller(agent)


@pytest.fixture
def tools_as(make_agent: Any) -> Any:
    """tools_as(scopes=None, admin=False) -> ToolCaller of a new agent."""

    def make(scopes: list[str] | None = None, admin: bool = False) -> ToolCaller:
        return ToolCaller(make_agent(scopes=scopes, admin=admin))

    return make
