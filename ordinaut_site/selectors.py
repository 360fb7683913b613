"""Reads of agents, their tokens and the audit log, for the API (writes are in services)."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from .errors import NotFound
from .models import Agent, AgentToken, AuditLog


def agent_list() -> QuerySet[Agent]:
    """Every agent, newest first (active or not: deactivated agents stay on record)."""
    return Agent.objects.order_by("-created_at", "-pk")


def agent_get(*, agent_id: str | uuid.UUID) -> Agent:
    agent = Agent.objects.filter(pk=agent_id).first()
    if agent is None:
        raise NotFound(f"No agent {agent_id}.")
    return agent


def token_list(*, agent: Agent) -> QuerySet[AgentToken]:
    """An agent's tokens, newest first, revoked and expired ones included."""
    return AgentToken.objects.filter(agent=agent).order_by("-created_at", "-pk")


def token_get(*, agent: Agent, prefix: str) -> AgentToken:
    token = AgentToken.objects.select_related("agent").filter(agent=agent, prefix=prefix).first()
    if token is None:
        raise NotFound(f"Agent {agent.name!r} has no token {prefix!r}.")
    return token


def audit_list() -> QuerySet[AuditLog]:
    """The audit log, newest first."""
    return AuditLog.objects.order_by("-at", "-pk")
