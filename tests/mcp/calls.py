"""Calling Ordinaut's MCP tools in tests: in process as an agent (the real token verifier, no
network), and reading results (structured content, or the REST error body a failed call carries)."""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import async_to_sync
from mcp import Client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.types import CallToolResult

from ordinaut_site.mcp_server import AgentTokenVerifier, mcp


def call_tool(token: str | None, tool: str, arguments: dict[str, Any]) -> CallToolResult:
    """One tool call through an in-memory MCP client, authenticated as the bearer of `token`.

    The HTTP transport's auth middleware sets this context variable from the Authorization header;
    in memory there is no header, so the test sets it from the same verifier. async_to_sync (not
    anyio.run) keeps the ORM on this thread, inside the test's transaction.
    """

    async def call() -> CallToolResult:
        reset = None
        if token is not None:
            access = await AgentTokenVerifier().verify_token(token)
            assert access is not None, "the test token does not authenticate"
            reset = auth_context_var.set(AuthenticatedUser(access))
        try:
            async with Client(mcp) as client:
                return await client.call_tool(tool, arguments)
        finally:
            if reset is not None:
                auth_context_var.reset(reset)

    return async_to_sync(call)()


def structured(result: CallToolResult) -> Any:
    assert not result.is_error, result.content
    return result.structured_content


def tool_error(result: CallToolResult, tool: str) -> dict[str, Any]:
    """The REST error body ({"error": {code, message, fields?}, "request_id"}) of a failed call."""
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    prefix = f"Error executing tool {tool}: "
    assert text.startswith(prefix), text
    body: dict[str, Any] = json.loads(text[len(prefix) :])
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"]
    return body
