"""The audit trail's writer: who acted (Actor, SYSTEM) and audit_record, the one way a row is appended.

A leaf module: every app records its changes here, and it imports no app."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import logs
from .models import Agent, AuditLog


@dataclass(frozen=True)
class Actor:
    """Who did something: an agent, an operator (Django user) or the system itself."""

    kind: str
    id: str = ""
    name: str = ""

    @classmethod
    def of_agent(cls, agent: Agent) -> Actor:
        return cls(AuditLog.ACTOR_AGENT, str(agent.pk), agent.name)

    @classmethod
    def of_user(cls, user: Any) -> Actor:
        return cls(AuditLog.ACTOR_USER, str(user.pk), user.get_username())

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(AuditLog.ACTOR_SYSTEM, "", name)


SYSTEM = Actor.system()


def audit_record(
    *,
    actor: Actor,
    action: str,
    subject_type: str = "",
    subject_id: object = "",
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one audit row. Call inside the transaction of the change it records."""
    return AuditLog.objects.create(
        actor_kind=actor.kind,
        actor_id=actor.id,
        actor_name=actor.name,
        action=action,
        subject_type=subject_type,
        subject_id=str(subject_id or ""),
        details=details or {},
        request_id=logs.current("request_id") or "",
    )
