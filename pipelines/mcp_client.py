"""A synchronous MCP client for workers and commands: list a server's tools, call one tool.

Each call is one `anyio.run` with a fresh connection: the SDK's client and its streams belong to
the event loop that made them, so nothing is shared across calls or across a prefork worker's
fork. Every failure comes out as a StepError saying whether to retry:
an error result (`isError`) is permanent unless the server marks it retryable (`_meta.retryable`);
connection errors, protocol errors and timeouts are transient; HTTP 401/403 is permanent.
An HTTP server's host is resolved and checked (pipelines/netpolicy.py) before each call and again
inside each connect, which goes to the checked address: a refused one is host_not_allowed, permanent.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx2
from celery.exceptions import SoftTimeLimitExceeded
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.types import INVALID_PARAMS, REQUEST_TIMEOUT, CallToolResult, TextContent
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from ordinaut_site.errors import (
    HostNotAllowed,
    StepError,
    ToolAuthFailed,
    ToolFailed,
    ToolInputInvalid,
    ToolOutputInvalid,
    ToolTimeout,
    ToolUnavailable,
)

from . import netpolicy

TRANSPORT_HTTP = "streamable_http"
TRANSPORT_STDIO = "stdio"
USER_AGENT = "Ordinaut/1 (+mcp)"
CONNECT_TIMEOUT_S = 5.0
# The overall deadline of a call is the server's timeout plus this, for connecting and the
# protocol's own round trips (discover, the tool listing the client fetches to check outputs).
SETUP_ALLOWANCE_S = 2.0
MAX_LIST_PAGES = 50
# A tools/list answers from memory on any sane server; a refresh through the API holds a web
# worker, so it waits at most this long whatever the server's timeout_seconds.
LIST_TIMEOUT_MAX_S = 60.0
MAX_MESSAGE_CHARS = 1000
RETRYABLE_META_KEYS = ("retryable", "io.ordinaut/retryable")

T = TypeVar("T")


@dataclass(frozen=True)
class ServerConfig:
    """What a call needs to reach a server, detached from the database row (and without secrets:
    those are read from the environment at call time)."""

    name: str
    transport: str
    url: str = ""
    command: str = ""
    args: tuple[str, ...] = ()
    headers_from_env: Mapping[str, str] = field(default_factory=dict)
    env_from_env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    protocol_version: str = ""


@dataclass(frozen=True)
class ListedTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None


@dataclass(frozen=True)
class Listing:
    tools: list[ListedTool]
    protocol_version: str


class _AuthRefused(Exception):
    """Raised by the HTTP response hook: the SDK would report a 401/403 as a generic -32603."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


# --- The two operations ------------------------------------------------------------------------


def tools_list(config: ServerConfig) -> Listing:
    """Every tool the server lists (all pages), with its schemas, within the server's timeout
    (at most LIST_TIMEOUT_MAX_S)."""

    async def listing(client: Client) -> Listing:
        tools: list[ListedTool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools += [
                ListedTool(
                    name=tool.name,
                    description=tool.description or "",
                    input_schema=dict(tool.input_schema or {}),
                    output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
                )
                for tool in page.tools
            ]
            cursor = page.next_cursor
            if cursor is None:
                break
        return Listing(tools=tools, protocol_version=client.protocol_version)

    timeout_s = min(config.timeout_s, LIST_TIMEOUT_MAX_S)
    return _run(config, timeout_s, timeout_s + SETUP_ALLOWANCE_S, listing)


def tool_call(config: ServerConfig, tool: str, arguments: Any, *, timeout_s: float) -> Any:
    """Call one tool, all done within timeout_s (and the server's own timeout); its structured
    content, else its text (JSON-decoded when it is JSON)."""
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise ToolInputInvalid(f"an MCP tool takes an object as input, not {type(arguments).__name__}")
    deadline_s = min(config.timeout_s + SETUP_ALLOWANCE_S, timeout_s)
    read_timeout_s = min(config.timeout_s, deadline_s)

    async def call(client: Client) -> CallToolResult:
        return await client.call_tool(tool, arguments, read_timeout_seconds=read_timeout_s)

    result = _run(config, read_timeout_s, deadline_s, call)
    if result.is_error:
        meta = result.meta or {}
        retryable = any(meta.get(key) is True for key in RETRYABLE_META_KEYS)
        message = _text_of(result) or "the tool reported an error without a message"
        raise ToolFailed(f"{config.name}.{tool}: {message}"[:MAX_MESSAGE_CHARS], retryable=retryable)
    return result_value(result)


def result_value(result: CallToolResult) -> Any:
    """Structured content when the tool gave some; else its text blocks joined, JSON-decoded
    when they are JSON; other content (images, resources) as {"content": [...]}."""
    if result.structured_content is not None:
        return result.structured_content
    if all(isinstance(block, TextContent) for block in result.content):
        text = _text_of(result)
        try:
            return json.loads(text)
        except ValueError:
            return text
    return {"content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]}


def _text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


# --- Connection ---------------------------------------------------------------------------------


def _run(config: ServerConfig, read_timeout_s: float, deadline_s: float, work: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, do `work`, disconnect, all within deadline_s, each request within read_timeout_s;
    every error as a StepError."""
    budget_s = read_timeout_s

    async def runner() -> T:
        with anyio.fail_after(deadline_s):
            if config.transport == TRANSPORT_STDIO:
                params = StdioServerParameters(
                    command=config.command, args=list(config.args), env=_child_env(config.env_from_env)
                )
                async with Client(params, mode=_mode(config), read_timeout_seconds=budget_s) as client:
                    return await work(client)
            headers = {"User-Agent": USER_AGENT, **_headers(config.headers_from_env)}
            timeout = httpx2.Timeout(budget_s, connect=min(CONNECT_TIMEOUT_S, budget_s))
            _check_address(config)
            async with (
                httpx2.AsyncClient(
                    headers=headers,
                    timeout=timeout,
                    event_hooks={"response": [_refuse_auth]},
                    transport=netpolicy.guarded_async_transport(),
                ) as http,
                Client(
                    streamable_http_client(config.url, http_client=http),
                    mode=_mode(config),
                    read_timeout_seconds=budget_s,
                ) as client,
            ):
                return await work(client)

    try:
        return anyio.run(runner)
    except BaseException as exc:  # every failure is translated, or re-raised as it was
        raise _translate(config, exc, deadline_s) from None


def _check_address(config: ServerConfig) -> None:
    """Resolve the server's host now (not at registration: a name may point elsewhere since) and
    refuse a non-public address (netpolicy); the guarded transport checks again at each connect."""
    parts = urlsplit(config.url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        netpolicy.checked_addresses(host, port)
    except HostNotAllowed as exc:
        raise HostNotAllowed(f"{config.name}: {exc.message}"[:MAX_MESSAGE_CHARS]) from None
    except (socket.gaierror, UnicodeError, ValueError) as exc:
        raise ToolUnavailable(f"{config.name}: cannot resolve {host}: {exc}"[:MAX_MESSAGE_CHARS]) from None


def _mode(config: ServerConfig) -> str:
    """Skip the discover probe when the last refresh found a modern (stateless) server."""
    return config.protocol_version if config.protocol_version in MODERN_PROTOCOL_VERSIONS else "auto"


async def _refuse_auth(response: httpx2.Response) -> None:
    if response.status_code in (401, 403):
        raise _AuthRefused(response.status_code)


def _headers(headers_from_env: Mapping[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for header, variable in headers_from_env.items():
        value = os.environ.get(variable)
        if value is None:
            raise ToolAuthFailed(f"environment variable {variable} (for header {header}) is not set in this process")
        headers[header] = value
    return headers


def _child_env(env_from_env: Mapping[str, str]) -> dict[str, str]:
    """Only what the server was given by name; the SDK adds PATH, HOME, USER, LOGNAME, SHELL, TERM."""
    env: dict[str, str] = {}
    for child, variable in env_from_env.items():
        value = os.environ.get(variable)
        if value is None:
            raise ToolAuthFailed(f"environment variable {variable} (for {child}) is not set in this process")
        env[child] = value
    return env


# --- Errors --------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions inside (nested) exception groups: anyio task groups wrap what escapes them."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _translate(config: ServerConfig, exc: BaseException, deadline_s: float) -> BaseException:
    leaves = list(_leaves(exc))
    for leaf in leaves:  # never swallow the worker's own time limit or a shutdown
        if isinstance(leaf, SoftTimeLimitExceeded | KeyboardInterrupt | SystemExit):
            return leaf
    where = config.name
    for kind in (_AuthRefused, StepError, MCPError, TimeoutError, httpx2.TimeoutException):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return _one(where, leaf, deadline_s)
    return _one(where, leaves[0] if leaves else exc, deadline_s)


def _one(where: str, exc: BaseException, deadline_s: float) -> StepError:
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, _AuthRefused):
        return ToolAuthFailed(
            f"{where}: the server answered {exc} (check the server's headers_from_env and their variables)"
        )
    if isinstance(exc, MCPError):
        if exc.code == REQUEST_TIMEOUT:
            return ToolTimeout(f"{where}: {exc.message}"[:MAX_MESSAGE_CHARS])
        if exc.code == INVALID_PARAMS:  # the server rejected the arguments: the same call fails again
            return ToolFailed(f"{where}: {exc.message}"[:MAX_MESSAGE_CHARS])
        return ToolUnavailable(f"{where}: MCP error {exc.code}: {exc.message}"[:MAX_MESSAGE_CHARS])
    if isinstance(exc, TimeoutError | httpx2.TimeoutException):
        return ToolTimeout(f"{where}: no answer within {deadline_s:g}s")
    if isinstance(exc, RuntimeError) and "structured content" in str(exc):
        return ToolOutputInvalid(f"{where}: {exc}"[:MAX_MESSAGE_CHARS])
    if isinstance(exc, httpx2.TransportError | OSError):
        return ToolUnavailable(f"{where}: {type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS])
    if isinstance(exc, ValidationError):
        return ToolUnavailable(f"{where}: the server answered something that is not MCP: {exc}"[:MAX_MESSAGE_CHARS])
    return ToolUnavailable(f"{where}: {type(exc).__name__}: {exc}"[:MAX_MESSAGE_CHARS])
