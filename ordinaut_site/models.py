"""Agents, their hashed API tokens, and the append-only audit log."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.utils import timezone

SCOPE_TASKS_READ = "tasks:read"
SCOPE_TASKS_WRITE = "tasks:write"
SCOPE_RUNS_READ = "runs:read"
SCOPE_RUNS_WRITE = "runs:write"
SCOPE_EVENTS_PUBLISH = "events:publish"
SCOPE_TOOLS_READ = "tools:read"
SCOPE_TOOLS_WRITE = "tools:write"
SCOPE_AGENTS_ADMIN = "agents:admin"
SCOPE_ADMIN = "admin"

ALL_SCOPES = (
    SCOPE_TASKS_READ,
    SCOPE_TASKS_WRITE,
    SCOPE_RUNS_READ,
    SCOPE_RUNS_WRITE,
    SCOPE_EVENTS_PUBLISH,
    SCOPE_TOOLS_READ,
    SCOPE_TOOLS_WRITE,
    SCOPE_AGENTS_ADMIN,
    SCOPE_ADMIN,
)


def _empty_list() -> list[str]:
    return []


class Agent(models.Model):
    """A caller of the API or MCP endpoint: an LLM assistant, a script, another service."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=100, unique=True, help_text="Unique, human-readable name.")
    scopes = models.JSONField(default=_empty_list, blank=True, help_text="Granted scopes, e.g. tasks:read.")
    is_active = models.BooleanField(default=True, help_text="Inactive agents cannot authenticate.")
    contact = models.CharField(max_length=200, blank=True, help_text="Who owns this agent (email, team).")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    deactivated_at = models.DateTimeField(null=True, blank=True, editable=False)
    tool_calls_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="Metered tool calls per UTC day; empty: ORDINAUT_BUDGET_TOOL_CALLS_PER_DAY."
    )
    cost_units_per_day = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tool cost units per UTC day; empty: ORDINAUT_BUDGET_COST_UNITS_PER_DAY."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    # DRF treats request.user as a user object; an authenticated agent is one.
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_anonymous(self) -> bool:
        return False

    def has_scope(self, scope: str) -> bool:
        return SCOPE_ADMIN in self.scopes or scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return SCOPE_ADMIN in self.scopes


class AgentToken(models.Model):
    """A bearer token of an agent. Only a short prefix is kept in clear; the secret is a SHA-256 hash."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="tokens")
    prefix = models.CharField(max_length=16, unique=True, editable=False, help_text="Public part, shown in lists.")
    secret_hash = models.CharField(max_length=64, editable=False)
    label = models.CharField(max_length=100, blank=True)
    scopes = models.JSONField(
        default=_empty_list, blank=True, help_text="Narrows the agent's scopes for this token; empty: all of them."
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Empty: never expires.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.agent.name}:{self.prefix}"

    def is_usable(self, now: Any = None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class AuditLog(models.Model):
    """One mutating action. Append-only: no FK to agents, and a Postgres trigger refuses UPDATE/DELETE."""

    ACTOR_AGENT = "agent"
    ACTOR_USER = "user"
    ACTOR_SYSTEM = "system"
    ACTOR_KINDS = [(ACTOR_AGENT, "Agent"), (ACTOR_USER, "Operator"), (ACTOR_SYSTEM, "System")]

    at = models.DateTimeField(default=timezone.now, db_index=True, editable=False)
    actor_kind = models.CharField(max_length=10, choices=ACTOR_KINDS)
    actor_id = models.CharField(max_length=64, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64, db_index=True)
    subject_type = models.CharField(max_length=32, blank=True)
    subject_id = models.CharField(max_length=64, blank=True, db_index=True)
    details = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name or self.actor_kind} {self.action}"


class IdempotencyRecord(models.Model):
    """The response to a request sent with an Idempotency-Key, replayed for the same key and body.

    Written in the same transaction as the work it records, so a row always has its response.
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    endpoint = models.CharField(max_length=300, help_text='Method and path, e.g. "POST /tasks".')
    request_hash = models.CharField(max_length=64, help_text="SHA-256 of the canonical JSON body and query.")
    response_status = models.PositiveSmallIntegerField(default=0)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["agent", "key", "endpoint"], name="ordinaut_idempotency_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} [{self.key}]"


class AgentUsage(models.Model):
    """What an agent's runs spent on metered tools in one UTC day (the budget counter)."""

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    tool_calls = models.PositiveIntegerField(default=0)
    cost_units = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0, help_text="Calls refused because the budget was spent.")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agent", "day"], name="agentusage_unique_day")]
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.agent_id} {self.day}: {self.tool_calls} calls, {self.cost_units} units"
