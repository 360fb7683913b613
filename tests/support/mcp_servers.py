"""Real MCP servers for tests, built with the mcp SDK's MCPServer: over streamable HTTP on loopback
(a uvicorn thread in this process) and over stdio (`python -m tests.support.mcp_servers stdio`).

Tools: `forecast` (structured output), `fail` (raises ToolError), `flaky` (an error result the
server marks retryable), `slow` (sleeps), `whoami` (a digest of the Authorization header it got),
`environment` (the server's own variables), `notes` (text only, no output schema).
`serve_http(token=...)` also requires that bearer token for every request (401 without it), as a
protected server would.

This module must not import Django: the stdio server is a plain subprocess.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent
from pydantic import AnyHttpUrl, BaseModel, Field

SERVER_NAME = "ordinaut-test-tools"
# The tools every test server offers, as tools/list names them.
TOOL_NAMES = ["environment", "fail", "flaky", "forecast", "notes", "slow", "whoami"]
# The environment variable tests put the protected server's Authorization header value in
# (tests/conftest.py sets it, so worker subprocesses inherit it).
TOKEN_ENV = "MCP_TEST_AUTHORIZATION"
TOKEN = "test-secret-7f3a9c"
START_TIMEOUT_S = 30.0


class Forecast(BaseModel):
    city: str
    summary: str
    high_c: float
    days: list[str] = Field(default_factory=list)


class _StaticToken(TokenVerifier):
    def __init__(self, token: str) -> None:
        self.token = token

    async def verify_token(self, token: str) -> AccessToken | None:
        if token != self.token:
            return None
        return AccessToken(token=token, client_id="ordinaut", subject="ordinaut", scopes=[])


def build_server(*, token: str | None = None) -> MCPServer:
    auth: dict[str, Any] = {}
    if token is not None:
        auth = {
            "token_verifier": _StaticToken(token),
            "auth": AuthSettings(issuer_url=AnyHttpUrl("https://auth.example.invalid"), resource_server_url=None),
        }
    server: MCPServer = MCPServer(SERVER_NAME, version="1.0.0", log_level="WARNING", **auth)

    @server.tool()
    async def forecast(city: str, days: int = 1) -> Forecast:
        """Today's forecast for a city."""
        return Forecast(city=city, summary="sunny", high_c=21.5, days=[f"day {n + 1}" for n in range(days)])

    @server.tool()
    async def fail(reason: str) -> str:
        """Always fails with the reason given."""
        raise ToolError(f"cannot do it: {reason}")

    @server.tool()
    async def flaky(reason: str) -> CallToolResult:
        """Fails, and says another attempt may succeed."""
        return CallToolResult(
            content=[TextContent(type="text", text=f"busy: {reason}")], is_error=True, _meta={"retryable": True}
        )

    @server.tool()
    async def slow(seconds: float) -> dict[str, float]:
        """Sleeps, then answers."""
        await anyio.sleep(seconds)
        return {"slept": seconds}

    @server.tool()
    async def whoami(ctx: Context) -> dict[str, Any]:
        """A digest of the Authorization header this request carried (null when none): proof that
        it arrived, without echoing a secret into step outputs."""
        value = (ctx.headers or {}).get("authorization")
        return {"authorization_sha256": digest(value) if value is not None else None}

    @server.tool()
    async def environment(names: list[str]) -> dict[str, str | None]:
        """The server process's environment variables of these names (null when unset)."""
        return {name: os.environ.get(name) for name in names}

    @server.tool(structured_output=False)
    async def notes(topic: str) -> str:
        """Text-only answer (JSON text), with no output schema."""
        return f'{{"topic": "{topic}", "count": 2}}'

    return server


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class HttpServer:
    """An MCP server on loopback (streamable HTTP, stateless), served by uvicorn in a thread."""

    port: int
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def serve_http(*, token: str | None = None) -> HttpServer:
    mcp = build_server(token=token)
    app = mcp.streamable_http_app(
        stateless_http=True,
        transport_security=TransportSecuritySettings(
            allowed_hosts=["127.0.0.1:*", "localhost:*"], allowed_origins=["http://127.0.0.1:*"]
        ),
    )
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"mcp-test-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test MCP server on port {port} did not start")
        time.sleep(0.02)
    return HttpServer(port=port, server=server, thread=thread)


@contextmanager
def http_server(*, token: str | None = None) -> Iterator[HttpServer]:
    running = serve_http(token=token)
    try:
        yield running
    finally:
        running.stop()


_shared: dict[str, HttpServer] = {}
_shared_lock = threading.Lock()


def shared_http_server() -> HttpServer:
    """One open server for the whole test process (the authorization matrix's world refreshes it)."""
    with _shared_lock:
        if "open" not in _shared:
            _shared["open"] = serve_http()
        return _shared["open"]


def stdio_command() -> tuple[str, list[str]]:
    """The command and arguments that start this module's server over stdio."""
    return sys.executable, ["-m", "tests.support.mcp_servers", "stdio"]


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        build_server().run()
    else:
        raise SystemExit("usage: python -m tests.support.mcp_servers stdio")
