"""Ordinaut as an MCP server (/mcp): the server, its bearer auth, and how a tool calls Django.

The tools themselves are registered by each app (tasks/mcp_tools.py, runs/mcp_tools.py,
pipelines/mcp_tools.py, imported by the apps' ready()), over the same services, selectors and
serializers as the REST views, with the scope their REST twin declares (`auth.view_scope`), the
same rate limits, idempotency store, isolation and audit. This module imports no app.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import tomllib
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from asgiref.sync import sync_to_async
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerMiddleware, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model
from rest_framework import exceptions as drf_exceptions
from rest_framework import serializers
from rest_framework.utils.encoders import JSONEncoder

from . import logs

# The REST handler's own flattening and message, so a tool's validation errors read as the API's.
from .api import (
    INTERNAL_ERROR_MESSAGE,
    MAX_OFFSET,
    LimitOffsetPagination,
    error_body,
    flatten_fields,
    validation_message,
)
from .errors import NotAuthenticated, OrdinautError, PermissionDenied, ValidationFailed
from .idempotency import arguments_hash, key_check, remembered
from .models import Agent
from .parsers import check_json_limits
from .services import TOKEN_PREFIX, token_authenticate
from .throttling import agent_wait

logger = logging.getLogger(__name__)

MCP_PATH = "/mcp"
# The SDK requires an issuer URL with auth settings; it is only published with OAuth metadata,
# which Ordinaut does not serve (its bearer tokens are agent tokens, not OAuth tokens).
UNUSED_ISSUER_URL = "https://ordinaut.invalid"
DEFAULT_PAGE = LimitOffsetPagination.default_limit
MAX_PAGE = LimitOffsetPagination.max_limit


def _version() -> str:
    try:
        with (Path(__file__).resolve().parents[1] / "pyproject.toml").open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0"


# --- Bearer auth: the agent tokens of the REST API ---------------------------------------------


class AgentAccessToken(AccessToken):
    """An authenticated agent token; carries the Agent row loaded when the token was checked."""

    _agent: Agent | None = PrivateAttr(default=None)

    @property
    def agent(self) -> Agent | None:
        return self._agent


class AgentTokenVerifier(TokenVerifier):
    """`Authorization: Bearer ord_...` -> the agent, exactly as the REST API authenticates it."""

    async def verify_token(self, token: str) -> AccessToken | None:
        found = await sync_to_async(token_authenticate, thread_sensitive=True)(token.strip())
        if found is None:
            return None
        agent, agent_token = found
        access = AgentAccessToken(
            token=f"{TOKEN_PREFIX}{agent_token.prefix}",  # the public prefix: the secret stays out of reprs
            client_id=agent.name,
            subject=str(agent.pk),
            scopes=sorted(agent.scopes),
            expires_at=int(agent_token.expires_at.timestamp()) if agent_token.expires_at else None,
        )
        access._agent = agent
        return access


mcp = MCPServer(
    "ordinaut",
    version=_version(),
    title="Ordinaut",
    instructions=(
        "Ordinaut schedules and runs tasks for AI agents. A task has a schedule (cron, rrule, once, "
        "interval, event or manual) and a payload {params, pipeline}: steps that call tools. Create "
        "tasks, preview schedules, run them now, watch their runs, approve or reject runs that wait for "
        "a human, publish events that start event tasks, and list the tools steps can use. Every tool "
        "needs a scope of the calling agent's token (named in its description); "
        "other agents' tasks and runs are not found unless the agent is an admin. Errors come back as "
        'the REST error shape: {"error": {"code", "message", "fields"?}, "request_id"}.'
    ),
    log_level="WARNING",
    token_verifier=AgentTokenVerifier(),
    auth=AuthSettings(issuer_url=UNUSED_ISSUER_URL, resource_server_url=None),  # type: ignore[arg-type]
)


class RefuseUnknownArguments(ServerMiddleware[Any]):
    """A tools/call naming an argument its tool does not have is a validation error naming it, as
    an unknown query parameter is on the REST API: never silently ignored (list_runs(task=...)
    would list every run). The SDK's argument models ignore extras, so the check is here."""

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        params = ctx.params if isinstance(ctx.params, dict) else None
        if ctx.method == "tools/call" and params is not None and isinstance(params.get("arguments"), dict):
            name = params.get("name")
            tool = mcp._tool_manager.get_tool(name) if isinstance(name, str) else None
            known = set(((tool.parameters or {}).get("properties") or {}) if tool is not None else ())
            unknown = sorted(set(params["arguments"]) - known) if tool is not None else []
            if unknown:
                fields = {
                    str(argument)[:100]: [f"unknown argument; known: {', '.join(sorted(known))}"]
                    for argument in unknown[:20]
                }
                with logs.bind(request_id=logs.current("request_id") or uuid.uuid4().hex):
                    text = _error_text(ValidationFailed(validation_message(fields), fields=fields))
                return CallToolResult(
                    content=[TextContent(type="text", text=f"Error executing tool {name}: {text}")], is_error=True
                )
        return await call_next(ctx)


mcp.middleware.append(RefuseUnknownArguments())


def transport_security(allowed_hosts: list[str]) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding allowlist (Host and Origin headers) from Django's ALLOWED_HOSTS.

    Django ignores the port; the SDK compares exact names or `name:*`, so each entry is allowed with
    any port. `*` turns the check off, as it turns Django's off. A `.example.com` entry allows
    example.com only: the SDK has no subdomain wildcard, so list subdomains one by one.
    """
    if "*" in allowed_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts: list[str] = []
    origins: list[str] = []
    for entry in allowed_hosts:
        name = entry.strip().lstrip(".").lower()
        if not name:
            continue
        hosts += [name, f"{name}:*"]
        origins += [f"{scheme}://{name}{port}" for scheme in ("http", "https") for port in ("", ":*")]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


# --- Calling services the way the REST views do ------------------------------------------------


def _caller() -> Agent:
    access = get_access_token()
    agent = access.agent if isinstance(access, AgentAccessToken) else None
    if agent is None:
        raise NotAuthenticated("Authentication credentials were not provided.")
    return agent


class RateLimited(OrdinautError):
    code = "rate_limited"
    status = 429


def _throttle(agent: Agent, *, writes: bool) -> None:
    """The REST API's per-agent rate limits (the same windows); a tool that changes something is a write."""
    wait = agent_wait(agent, writes=writes)
    if wait is not None:
        wait_s = math.ceil(wait or 1)
        raise RateLimited(f"Request was throttled. Expected available in {wait_s} seconds.", retry_after=wait_s)


def _plain(data: Any) -> Any:
    """The JSON the REST response would carry (UUIDs, datetimes and decimals as DRF writes them)."""
    return json.loads(json.dumps(data, cls=JSONEncoder))


IDEMPOTENCY_ARGUMENT = "idempotency_key"


def _in_django(agent: Agent, tool: str, call: ToolCall) -> Any:
    if not agent.has_scope(call.scope):
        raise PermissionDenied(f"This token lacks the scope {call.scope!r} this tool needs.")
    _throttle(agent, writes=call.writes)
    _check_json(call.json_arguments)
    try:
        if not call.idempotency_key:
            return _plain(call.work(agent))
        # The REST API's Idempotency-Key store and rules, per agent and tool: the same key with the
        # same arguments answers the first result; with other arguments it is a conflict.
        _status, body, _replayed = remembered(
            agent=agent,
            key=key_check(call.idempotency_key, field=IDEMPOTENCY_ARGUMENT),
            endpoint=f"MCP {tool}",
            digest=arguments_hash(call.arguments),
            work=lambda: (200, _plain(call.work(agent))),
            field=IDEMPOTENCY_ARGUMENT,
        )
        return body
    except drf_exceptions.ValidationError as exc:
        fields = flatten_fields(exc.detail)
        raise ValidationFailed(validation_message(fields), fields=fields) from None


def _error_text(exc: OrdinautError) -> str:
    return json.dumps(error_body(exc.code, exc.message, exc.fields))


class ToolCall:
    """What a tool asks of `call`: the work, the scope it needs, and how to count and check it."""

    def __init__(
        self,
        work: Callable[[Agent], Any],
        scope: str,
        *,
        writes: bool,
        json_arguments: dict[str, Any] | None,
        idempotency_key: str | None,
        arguments: dict[str, Any] | None,
    ) -> None:
        self.work = work
        self.scope = scope
        self.writes = writes
        self.json_arguments = json_arguments or {}
        self.idempotency_key = idempotency_key
        self.arguments = arguments or {}


async def call(
    tool: str,
    scope: str,
    work: Callable[[Agent], Any],
    *,
    writes: bool = False,
    json_arguments: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    arguments: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run `work(agent)` in Django's thread for the ORM, after the scope and rate checks and the
    API's JSON limits on the free-form arguments (`json_arguments`, by argument name). With an
    `idempotency_key`, `arguments` (all of the tool's but the key) are what a retry must repeat.

    Service errors become a ToolError carrying the REST error body; anything unexpected is logged
    with the request id and answered as an internal error, never as a traceback.
    """
    request = ToolCall(
        work,
        scope,
        writes=writes,
        json_arguments=json_arguments,
        idempotency_key=idempotency_key,
        arguments=arguments,
    )
    request_id = logs.current("request_id") or uuid.uuid4().hex
    with logs.bind(request_id=request_id):
        try:
            agent = _caller()
            with logs.bind(agent=agent.name):
                result = await sync_to_async(_in_django, thread_sensitive=True)(agent, tool, request)
        except OrdinautError as exc:
            raise ToolError(_error_text(exc)) from None
        except Exception:
            logger.exception("MCP tool %s failed", tool)
            raise ToolError(json.dumps(error_body("internal_error", INTERNAL_ERROR_MESSAGE))) from None
    return cast(dict[str, Any], result)


def _check_json(arguments: dict[str, Any]) -> None:
    """The REST parser's limits (depth, string length, items, NUL; no NaN or Infinity)."""
    check_json_limits({name: value for name, value in arguments.items() if value is not None})


def validated(serializer_class: type[serializers.Serializer], data: dict[str, Any]) -> dict[str, Any]:
    serializer = serializer_class(data={k: v for k, v in data.items() if v is not None})
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def page(
    items: Any, limit: int, offset: int, serializer_class: type[serializers.Serializer] | None = None
) -> dict[str, Any]:
    """A page (of a queryset or a list) in the REST list shape; `next_offset` (null on the last
    page) stands in for `next`."""
    count = len(items) if isinstance(items, list) else items.count()
    chunk = items[offset : offset + limit]
    results = serializer_class(chunk, many=True).data if serializer_class is not None else chunk
    return {"count": count, "next_offset": offset + limit if offset + limit < count else None, "results": results}


# --- Parameter types (descriptions are what an agent reads) ------------------------------------

TaskId = Annotated[uuid.UUID, Field(description="The task's id (UUID).")]
RunId = Annotated[uuid.UUID, Field(description="The run's id (UUID).")]
Limit = Annotated[int, Field(ge=1, le=MAX_PAGE, description=f"Page size, 1..{MAX_PAGE}.")]
Offset = Annotated[int, Field(ge=0, le=MAX_OFFSET, description="How many items to skip (newest first).")]
Comment = Annotated[str, Field(max_length=2000, description="Why (kept with the decision and in the audit log).")]
IdempotencyKey = Annotated[
    str | None,
    Field(
        description="Calling again with the same key and the same arguments answers the first result "
        "instead of doing it twice (for ORDINAUT_IDEMPOTENCY_TTL_S, as the REST Idempotency-Key header); "
        "the key with other arguments is a conflict error. 1..255 printable ASCII characters, no spaces.",
    ),
]
IDEMPOTENCY_PARAMETER = inspect.Parameter(
    IDEMPOTENCY_ARGUMENT, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=IdempotencyKey
)

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False)
WRITES = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


# --- Tool arguments from a REST serializer ---------------------------------------------------------

_SCALARS: list[tuple[type[serializers.Field], Any]] = [
    (serializers.BooleanField, bool),
    (serializers.IntegerField, int),
    (serializers.FloatField, float),
    (serializers.DateTimeField, datetime),
    (serializers.UUIDField, uuid.UUID),
    (serializers.JSONField, dict[str, Any]),
    (serializers.DictField, dict[str, Any]),
    (serializers.ListField, list[Any]),
    (serializers.CharField, str),
]


def _annotation(field: serializers.Field, *, optional: bool = False) -> Any:
    """The Python type of a writable serializer field, with its limits as JSON-schema hints.

    Limits are published, not enforced here: the serializer checks them when the tool runs, so a
    value out of range gets the REST API's validation error (code, message, field), not the SDK's.
    """
    if isinstance(field, serializers.ChoiceField):
        kind: Any = Literal[tuple(field.choices)]
    else:
        kind = next((python for drf, python in _SCALARS if isinstance(field, drf)), Any)
    hints: dict[str, Any] = {}
    for attribute, key in (("min_value", "minimum"), ("max_value", "maximum")):
        if getattr(field, attribute, None) is not None:
            hints[key] = getattr(field, attribute)
    for attribute, key in (("min_length", "minLength"), ("max_length", "maxLength")):
        if getattr(field, attribute, None) is not None:
            hints[key] = getattr(field, attribute)
    if optional or field.allow_null or not field.required:
        kind = kind | None
    description = str(field.help_text or field.label or "")
    return Annotated[kind, Field(description=description, json_schema_extra=hints or None)]


def writable_fields(serializer_class: type[serializers.Serializer]) -> dict[str, serializers.Field]:
    """The fields a client may send, in the serializer's order."""
    fields = serializer_class().fields
    return {name: field for name, field in fields.items() if not field.read_only}


def serializer_parameters(serializer_class: type[serializers.Serializer]) -> list[inspect.Parameter]:
    """One keyword argument per writable field: required ones without a default, the others None
    (not given: the serializer's default applies)."""
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if field.required else None,
            annotation=_annotation(field),
        )
        for name, field in writable_fields(serializer_class).items()
    ]


def serializer_changes_model(serializer_class: type[serializers.Serializer], name: str) -> type[BaseModel]:
    """A PATCH body as a model: every writable field optional; only those given change."""
    fields: dict[str, Any] = {
        field_name: (_annotation(field, optional=True), None)
        for field_name, field in writable_fields(serializer_class).items()
    }
    doc = "Only the fields given change (PATCH); the merged object is validated as a whole."
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


def with_parameters(*parameters: inspect.Parameter) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a `**arguments` tool function the signature the MCP SDK builds its input schema from."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            list(parameters), return_annotation=dict[str, Any]
        )
        return function

    return decorate


def given(arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments a client gave (None means not given), without the idempotency key."""
    return {name: value for name, value in arguments.items() if value is not None and name != IDEMPOTENCY_ARGUMENT}
