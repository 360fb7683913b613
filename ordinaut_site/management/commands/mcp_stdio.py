"""`manage.py mcp_stdio`: Ordinaut's MCP server over stdio, for desktop MCP clients that start
servers as subprocesses. The same server, tools, scopes and results as the HTTP endpoint /mcp.

The agent token comes from the ORDINAUT_TOKEN environment variable, never from the command line
(arguments show in `ps`). A missing or unusable token stops the command at start with one line on
stderr and a non-zero exit; stdout is the protocol channel and carries nothing else (logs go to
stderr, as everywhere). The token is checked again on every tool call, as /mcp checks the bearer
token on every request: a token revoked or expired, or an agent deactivated, mid-session stops
working at the next call, and scope changes apply at once.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

import anyio
from asgiref.sync import sync_to_async
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections, connections
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.types import CallToolResult, TextContent

from ordinaut_site import logs
from ordinaut_site.api import INTERNAL_ERROR_MESSAGE, error_body
from ordinaut_site.mcp_server import AgentAccessToken, AgentTokenVerifier, mcp

logger = logging.getLogger(__name__)

TOKEN_ENV = "ORDINAUT_TOKEN"  # noqa: S105 - the variable's name, not a secret
# The REST API's answer to a bad bearer token (ordinaut_site/auth.py), as a tool error body.
BAD_TOKEN_MESSAGE = "Invalid, expired or revoked token."  # noqa: S105 - a message


async def authenticate(raw: str) -> AgentAccessToken | None:
    """The agent behind `raw` now, as /mcp's bearer auth finds it, in Django's ORM thread; first
    dropping a broken or too old database connection, as Django does before each request."""
    await sync_to_async(close_old_connections, thread_sensitive=True)()
    access = await AgentTokenVerifier().verify_token(raw)
    return access if isinstance(access, AgentAccessToken) else None


def refused(tool: object, code: str, message: str) -> CallToolResult:
    """A tool error as a tool of mcp_server refuses a call: the SDK's prefix, then the REST error body."""
    body = json.dumps(error_body(code, message))
    return CallToolResult(
        content=[TextContent(type="text", text=f"Error executing tool {tool}: {body}")], is_error=True
    )


class Reauthenticate(ServerMiddleware[Any]):
    """Each tools/call is authenticated again, and runs as the agent that check found.

    The HTTP transport's auth middleware sets the SDK's auth context per request from the
    Authorization header; here it is set per call from the token the process was started with.
    A token that no longer works answers the call as the REST API answers a bad token.
    """

    def __init__(self, raw: str) -> None:
        self.raw = raw

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = ctx.params.get("name") if isinstance(ctx.params, dict) else None
        with logs.bind(request_id=uuid.uuid4().hex):
            try:
                access = await authenticate(self.raw)
            except DatabaseError:
                logger.exception("MCP tool %s: the token could not be checked", name)
                return refused(name, "internal_error", INTERNAL_ERROR_MESSAGE)
            if access is None:
                logger.warning("%s no longer authenticates (revoked, expired or agent deactivated)", TOKEN_ENV)
                return refused(name, "not_authenticated", BAD_TOKEN_MESSAGE)
            reset = auth_context_var.set(AuthenticatedUser(access))
            try:
                return await call_next(ctx)
            finally:
                auth_context_var.reset(reset)


class Command(BaseCommand):
    help = (
        f"Serve Ordinaut's MCP tools over stdio (for desktop MCP clients), as the agent whose token is in "
        f"the {TOKEN_ENV} environment variable."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        raw = os.environ.get(TOKEN_ENV, "").strip()
        if not raw:
            raise CommandError(f"{TOKEN_ENV} is not set: put the agent's API token (ord_...) in the environment.")
        anyio.run(self.serve, raw)

    async def serve(self, raw: str) -> None:
        try:
            try:
                access = await authenticate(raw)
            except DatabaseError as exc:
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise CommandError(f"cannot check {TOKEN_ENV}: the database is unreachable ({first_line})") from None
            if access is None or access.agent is None:
                raise CommandError(
                    f"{TOKEN_ENV} does not authenticate: the token is invalid, expired or revoked, "
                    "or its agent is deactivated."
                )
            logger.info("MCP over stdio as agent %s (scopes: %s)", access.agent.name, ", ".join(access.scopes))
            mcp.middleware.append(Reauthenticate(raw))
            await mcp.run_stdio_async()
        finally:
            await sync_to_async(connections.close_all, thread_sensitive=True)()
