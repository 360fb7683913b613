"""Writes of the tool catalog: registering MCP tool servers (every write audited) and discovering
their tools (`tools/list`). Each change clears this process's catalog cache."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.errors import (
    Conflict,
    NotFound,
    StepError,
    ToolServerUnreachable,
    ValidationFailed,
)

from . import mcp_client, netpolicy
from .catalog import RESERVED_SERVER_NAMES, catalog_cache_clear, server_config
from .mcp_client import ListedTool
from .models import SERVER_NAME_MAX_CHARS, SERVER_NAME_PATTERN, TOOL_NAME_MAX_CHARS, ToolServer
from .models import Tool as CatalogTool
from .selectors import tool_server_get
from .spec import MAX_USES_LEN, USES_RE

SERVER_NAME_RE = re.compile(SERVER_NAME_PATTERN)
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}$")  # an HTTP token (RFC 9110)
ENV_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
MAX_HEADERS = 20
MAX_ARGS = 50
MIN_TIMEOUT_S = 0.5
MAX_LISTED_NAMES = 50  # names listed in an audit row's details


def max_timeout_s() -> int:
    return int(settings.ORDINAUT_MAX_STEP_TIMEOUT_S)


# --- Services: registering servers --------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name or len(name) > SERVER_NAME_MAX_CHARS or not SERVER_NAME_RE.match(name):
        raise ValidationFailed.on(
            "name", f"must be 1 to {SERVER_NAME_MAX_CHARS} characters: lower-case letters, digits, _ and -"
        )
    if name in RESERVED_SERVER_NAMES:
        raise ValidationFailed.on("name", f"{name!r} is reserved for Ordinaut's built-in tools")
    return name


def _check_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: http://[::1/mcp
        raise ValidationFailed.on("url", "is not a valid URL") from None
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValidationFailed.on("url", "has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed.on("url", "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed.on("url", "must not carry credentials; name them in headers_from_env instead")
    if any(char.isspace() for char in url):
        raise ValidationFailed.on("url", "must not contain spaces")
    _check_address(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    return url


def _check_address(host: str, port: int) -> None:
    """The URL's host must not be (or resolve to) a loopback, private, link-local or other non-public
    address outside ORDINAUT_ALLOWED_PRIVATE_NETWORKS (pipelines/netpolicy.py). A name that does not
    resolve now is accepted: every connection resolves and checks again."""
    try:
        netpolicy.checked_addresses(host, port)
    except StepError as exc:
        raise ValidationFailed.on("url", exc.message) from None
    except (socket.gaierror, UnicodeError):
        pass


def _check_env_map(
    field_name: str, mapping: Any, *, key_re: re.Pattern[str], key_kind: str, prefix: str
) -> dict[str, str]:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise ValidationFailed.on(field_name, f'must be an object {{"{key_kind}": "ENV_VAR"}}')
    if len(mapping) > MAX_HEADERS:
        raise ValidationFailed.on(field_name, f"at most {MAX_HEADERS} entries")
    for key, variable in mapping.items():
        if not isinstance(key, str) or not key_re.match(key):
            raise ValidationFailed.on(field_name, f"{str(key)[:100]!r} is not a valid {key_kind}")
        if not isinstance(variable, str) or not ENV_VAR_RE.match(variable):
            raise ValidationFailed.on(
                field_name, f"{key}: {str(variable)[:100]!r} is not an environment variable name (A-Z, 0-9, _)"
            )
        if prefix and not variable.startswith(prefix):
            raise ValidationFailed.on(
                field_name,
                f"{key}: servers registered through the API may read only environment variables whose names "
                f"start with {prefix} (ORDINAUT_TOOL_HEADER_ENV_PREFIX); operators may name any",
            )
    return dict(mapping)


def _check_timeout(timeout_seconds: Any) -> float:
    try:
        value = float(timeout_seconds)
    except (TypeError, ValueError):
        raise ValidationFailed.on("timeout_seconds", "must be a number of seconds") from None
    if not MIN_TIMEOUT_S <= value <= max_timeout_s():
        raise ValidationFailed.on("timeout_seconds", f"must be from {MIN_TIMEOUT_S} to {max_timeout_s()} seconds")
    return value


@dataclass(frozen=True)
class ServerFields:
    """A tool server's settings, checked (tool_server_clean)."""

    name: str
    transport: str
    url: str = ""
    command: str = ""
    args: list[str] = field(default_factory=list)
    headers_from_env: dict[str, str] = field(default_factory=dict)
    env_from_env: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 30.0
    enabled: bool = True

    def as_model_fields(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.transport,
            "url": self.url,
            "command": self.command,
            "args": self.args,
            "headers_from_env": self.headers_from_env,
            "env_from_env": self.env_from_env,
            "timeout_seconds": self.timeout_seconds,
            "enabled": self.enabled,
        }


def tool_server_clean(
    *,
    name: str,
    transport: str = ToolServer.Transport.STREAMABLE_HTTP,
    url: str = "",
    command: str = "",
    args: Any = None,
    headers_from_env: Any = None,
    env_from_env: Any = None,
    timeout_seconds: Any = 30.0,
    enabled: bool = True,
    from_api: bool = False,
) -> ServerFields:
    """Check a server's settings. Through the API (docs/mcp.md): HTTP servers only, and headers only
    from variables named with ORDINAUT_TOOL_HEADER_ENV_PREFIX (an agent must not be able to send,
    say, DATABASE_URL to a server of its choosing). Operators may do both."""
    _check_name(name)
    prefix = settings.ORDINAUT_TOOL_HEADER_ENV_PREFIX if from_api else ""
    if transport == ToolServer.Transport.STREAMABLE_HTTP:
        if command or args:
            raise ValidationFailed.on("command", "is for stdio servers; a streamable_http server has a url")
        if env_from_env:
            raise ValidationFailed.on("env_from_env", "is for stdio servers; use headers_from_env")
        return ServerFields(
            name=name,
            transport=transport,
            url=_check_url(url or ""),
            headers_from_env=_check_env_map(
                "headers_from_env", headers_from_env, key_re=HEADER_NAME_RE, key_kind="header name", prefix=prefix
            ),
            timeout_seconds=_check_timeout(timeout_seconds),
            enabled=bool(enabled),
        )
    if transport == ToolServer.Transport.STDIO:
        if from_api:
            raise ValidationFailed.on(
                "transport",
                "stdio servers are registered by operators only (manage.py add_tool_server NAME --command ..., "
                "or the admin); the API registers streamable_http servers",
            )
        if url:
            raise ValidationFailed.on("url", "is for streamable_http servers; a stdio server has a command")
        if headers_from_env:
            raise ValidationFailed.on("headers_from_env", "is for streamable_http servers; use env_from_env")
        if not isinstance(command, str) or not command.strip():
            raise ValidationFailed.on("command", "is required for a stdio server")
        if args is None:
            args = []
        if not isinstance(args, list) or len(args) > MAX_ARGS or not all(isinstance(arg, str) for arg in args):
            raise ValidationFailed.on("args", f"must be a list of at most {MAX_ARGS} strings")
        return ServerFields(
            name=name,
            transport=transport,
            command=command.strip(),
            args=list(args),
            env_from_env=_check_env_map(
                "env_from_env", env_from_env, key_re=ENV_VAR_RE, key_kind="variable name", prefix=""
            ),
            timeout_seconds=_check_timeout(timeout_seconds),
            enabled=bool(enabled),
        )
    raise ValidationFailed.on("transport", "must be streamable_http or stdio")


def _audit_fields(server: ToolServer) -> dict[str, Any]:
    """What an audit row says about a server: where it is and which variables it reads (names only)."""
    target = (
        {"url": server.url} if server.transport == ToolServer.Transport.STREAMABLE_HTTP else {"command": server.command}
    )
    return {
        "name": server.name,
        "transport": server.transport,
        **target,
        "headers_from_env": dict(server.headers_from_env or {}),
        "env_from_env": dict(server.env_from_env or {}),
        "timeout_seconds": server.timeout_seconds,
        "enabled": server.enabled,
    }


def tool_server_create(*, fields: ServerFields, actor: Actor) -> ToolServer:
    """Register a server (no connection is made: refresh discovers its tools). 409 if the name is taken."""
    if ToolServer.objects.filter(name=fields.name).exists():
        raise Conflict(f"A tool server named {fields.name!r} exists already.", fields={"name": ["is taken"]})
    try:
        with transaction.atomic():
            server = ToolServer.objects.create(
                **fields.as_model_fields(), created_by={"kind": actor.kind, "id": actor.id, "name": actor.name}
            )
            audit_record(
                actor=actor,
                action="tool_server.create",
                subject_type="tool_server",
                subject_id=server.pk,
                details=_audit_fields(server),
            )
    except IntegrityError:  # a concurrent registration took the name between the check and the insert
        raise Conflict(f"A tool server named {fields.name!r} exists already.", fields={"name": ["is taken"]}) from None
    catalog_cache_clear()
    return server


def tool_server_update(*, server: ToolServer, fields: ServerFields, actor: Actor) -> ToolServer:
    """Change a server's settings (operators, in the admin). Its tools stay until the next refresh."""
    if ToolServer.objects.filter(name=fields.name).exclude(pk=server.pk).exists():
        raise Conflict(f"A tool server named {fields.name!r} exists already.", fields={"name": ["is taken"]})
    before = _audit_fields(server)
    with transaction.atomic():
        ToolServer.objects.filter(pk=server.pk).update(**fields.as_model_fields())
        server.refresh_from_db()
        after = _audit_fields(server)
        changed = {key: after[key] for key in after if before.get(key) != after[key]}
        audit_record(
            actor=actor, action="tool_server.update", subject_type="tool_server", subject_id=server.pk, details=changed
        )
    catalog_cache_clear()
    return server


def tool_server_delete(*, server: ToolServer, actor: Actor) -> None:
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="tool_server.delete",
            subject_type="tool_server",
            subject_id=server.pk,
            details={**_audit_fields(server), "tools": server.tools.count()},
        )
        server.delete()
    catalog_cache_clear()


def tool_set_cost(*, tool: CatalogTool, cost: int, actor: Actor) -> CatalogTool:
    """An operator prices a catalog tool for budgets (kept across refreshes)."""
    if cost < 0:
        raise ValidationFailed.on("cost", "must be 0 or more")
    with transaction.atomic():
        previous = tool.cost
        CatalogTool.objects.filter(pk=tool.pk).update(cost=cost)
        tool.cost = cost
        audit_record(
            actor=actor,
            action="tool.set_cost",
            subject_type="tool_server",
            subject_id=tool.server_id,
            details={"tool": tool.name, "from": previous, "to": cost},
        )
    catalog_cache_clear()
    return tool


# --- Services: discovery --------------------------------------------------------------------------


@dataclass(frozen=True)
class RefreshResult:
    server: ToolServer
    tools: list[CatalogTool]
    added: list[str]
    removed: list[str]
    changed: list[str]
    skipped: list[str]

    @property
    def changed_anything(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def _usable(server: ToolServer, listed: list[ListedTool]) -> tuple[dict[str, ListedTool], list[str]]:
    """The listed tools a step can name (`<server>.<tool>`), first of each name; the others, with why."""
    usable: dict[str, ListedTool] = {}
    skipped: list[str] = []
    for tool in listed:
        uses = f"{server.name}.{tool.name}"
        if len(tool.name) > TOOL_NAME_MAX_CHARS or len(uses) > MAX_USES_LEN or not USES_RE.match(uses) or ".." in uses:
            skipped.append(f"{tool.name[:100]!r}: not usable as a tool name in `uses`")
        elif tool.name in usable:
            skipped.append(f"{tool.name!r}: listed twice")
        else:
            usable[tool.name] = tool
    return usable, skipped


def tool_server_refresh(*, server: ToolServer, actor: Actor, audit_unchanged: bool = True) -> RefreshResult:
    """Ask the server for its tools and make the catalog say exactly that, in one transaction:
    new tools added, removed ones deleted, changed ones updated (an operator's cost is kept).

    A server that cannot be asked keeps its tools, records the error, and raises
    ToolServerUnreachable. Audited, except (audit_unchanged=False, the periodic refresh) a
    refresh that changed nothing and a failure that repeats the previous one.
    """
    try:
        listing = mcp_client.tools_list(server_config(server))
    except StepError as exc:
        now = timezone.now()
        with transaction.atomic():
            previous = ToolServer.objects.filter(pk=server.pk).values_list("last_error", flat=True).first()
            ToolServer.objects.filter(pk=server.pk).update(last_error=exc.message, last_error_at=now)
            if audit_unchanged or previous != exc.message:
                audit_record(
                    actor=actor,
                    action="tool_server.refresh",
                    subject_type="tool_server",
                    subject_id=server.pk,
                    details={"name": server.name, "ok": False, "error": exc.message},
                )
        server.last_error, server.last_error_at = exc.message, now
        raise ToolServerUnreachable(f"Could not list the tools of {server.name!r}: {exc.message}") from None

    usable, skipped = _usable(server, listing.tools)
    now = timezone.now()
    with transaction.atomic():
        # Two refreshes of one server (API, beat, admin) must not both insert the same new tool:
        # the row lock makes the second wait, then diff against what the first wrote.
        locked = ToolServer.objects.select_for_update().filter(pk=server.pk).first()
        if locked is None:
            raise NotFound(f"No tool server named {server.name!r}.")
        existing = {tool.name: tool for tool in CatalogTool.objects.filter(server=locked)}
        removed = sorted(set(existing) - set(usable))
        added = sorted(set(usable) - set(existing))
        changed: list[str] = []
        CatalogTool.objects.filter(server=locked, name__in=removed).delete()
        CatalogTool.objects.bulk_create(
            [
                CatalogTool(
                    server=locked,
                    name=name,
                    description=usable[name].description,
                    input_schema=usable[name].input_schema,
                    output_schema=usable[name].output_schema,
                    created_at=now,
                    updated_at=now,
                )
                for name in added
            ]
        )
        for name in sorted(set(usable) & set(existing)):
            row, listed = existing[name], usable[name]
            if (row.description, row.input_schema, row.output_schema) != (
                listed.description,
                listed.input_schema,
                listed.output_schema,
            ):
                CatalogTool.objects.filter(pk=row.pk).update(
                    description=listed.description,
                    input_schema=listed.input_schema,
                    output_schema=listed.output_schema,
                    updated_at=now,
                )
                changed.append(name)
        ToolServer.objects.filter(pk=locked.pk).update(
            last_refreshed_at=now, last_error="", last_error_at=None, protocol_version=listing.protocol_version[:32]
        )
        result = RefreshResult(
            server=tool_server_get(name=locked.name),
            tools=list(CatalogTool.objects.filter(server=locked).select_related("server").order_by("name")),
            added=added,
            removed=removed,
            changed=changed,
            skipped=skipped,
        )
        if audit_unchanged or result.changed_anything:
            audit_record(
                actor=actor,
                action="tool_server.refresh",
                subject_type="tool_server",
                subject_id=locked.pk,
                details={
                    "name": locked.name,
                    "ok": True,
                    "tools": len(result.tools),
                    "added": added[:MAX_LISTED_NAMES],
                    "removed": removed[:MAX_LISTED_NAMES],
                    "changed": changed[:MAX_LISTED_NAMES],
                },
            )
    catalog_cache_clear()
    return result


def tool_servers_refresh_all(*, actor: Actor) -> dict[str, str]:
    """The periodic refresh: every enabled server, one after another; {name: "ok" | the error}.
    Audited only where the catalog changed or a server started failing."""
    outcome: dict[str, str] = {}
    for server in ToolServer.objects.filter(enabled=True).order_by("name"):
        try:
            result = tool_server_refresh(server=server, actor=actor, audit_unchanged=False)
        except (ToolServerUnreachable, NotFound) as exc:
            outcome[server.name] = exc.message
        else:
            outcome[server.name] = f"ok: {len(result.tools)} tools"
    return outcome
