"""The tool catalog: MCP tool servers and the tools their `tools/list` reported."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
SERVER_NAME_MAX_CHARS = 64
TOOL_NAME_MAX_CHARS = 128  # the MCP spec's limit


def _empty_dict() -> dict[str, str]:
    return {}


def _empty_list() -> list[str]:
    return []


class ToolServer(models.Model):
    """An MCP server; its name is the prefix of `uses` (`<name>.<tool>`).

    Secrets never live here: `headers_from_env` (HTTP) and `env_from_env` (stdio) name the
    environment variables of Ordinaut's processes whose values are sent, read at call time.
    """

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
        STDIO = "stdio", "stdio (a subprocess)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(
        max_length=SERVER_NAME_MAX_CHARS, unique=True, help_text="The prefix in `uses`: lower case, digits, _ and -."
    )
    transport = models.CharField(max_length=16, choices=Transport.choices, default=Transport.STREAMABLE_HTTP)
    url = models.CharField(
        max_length=2000, blank=True, help_text="streamable_http: the endpoint, e.g. https://host/mcp."
    )
    command = models.CharField(max_length=500, blank=True, help_text="stdio: the executable to start.")
    args = models.JSONField(default=_empty_list, blank=True, help_text="stdio: its arguments (a list of strings).")
    headers_from_env = models.JSONField(
        default=_empty_dict,
        blank=True,
        help_text='streamable_http: {"Header-Name": "ENV_VAR"}; each header\'s value is read from that variable.',
    )
    env_from_env = models.JSONField(
        default=_empty_dict,
        blank=True,
        help_text='stdio: {"CHILD_VAR": "ENV_VAR"}; the child gets only these (and PATH, HOME, ...).',
    )
    timeout_seconds = models.FloatField(default=30, help_text="Longest a tools/list or a tool call may take.")
    enabled = models.BooleanField(default=True, help_text="Disabled servers' tools do not resolve.")
    created_by = models.JSONField(default=_empty_dict, blank=True, editable=False, help_text="{kind, id, name}")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_refreshed_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_error = models.TextField(
        blank=True, editable=False, help_text="Why the last refresh failed (empty: it did not)."
    )
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)
    protocol_version = models.CharField(
        max_length=32, blank=True, editable=False, help_text="What the last refresh negotiated; calls reuse it."
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(name__regex=SERVER_NAME_PATTERN) & ~Q(name="orchestrator"),
                name="toolserver_name_valid",
            ),
            models.CheckConstraint(
                condition=(Q(transport="streamable_http") & ~Q(url="")) | (Q(transport="stdio") & ~Q(command="")),
                name="toolserver_transport_target",
            ),
            models.CheckConstraint(condition=Q(timeout_seconds__gt=0), name="toolserver_timeout_positive"),
        ]

    def __str__(self) -> str:
        return self.name


class Tool(models.Model):
    """One tool of a server, as its last successful `tools/list` described it."""

    server = models.ForeignKey(ToolServer, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=TOOL_NAME_MAX_CHARS)
    description = models.TextField(blank=True)
    input_schema = models.JSONField(default=dict, blank=True)
    output_schema = models.JSONField(null=True, blank=True)
    cost = models.PositiveIntegerField(default=1, help_text="Budget cost units per call (kept across refreshes).")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["server__name", "name"]
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="tool_unique_per_server"),
            models.CheckConstraint(condition=~Q(name=""), name="tool_name_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.server.name}.{self.name}" if self.server_id else self.name

    @property
    def full_name(self) -> str:
        return f"{self.server.name}.{self.name}"
