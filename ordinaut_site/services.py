"""Services for agents and tokens (the only writers of those rows)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone

from .audit import Actor, audit_record
from .errors import Conflict, PermissionDenied, ValidationFailed
from .models import ALL_SCOPES, SCOPE_ADMIN, Agent, AgentToken, AuditLog
from .parsers import display_name_problem
from .signals import agent_deactivated, agent_reactivated

TOKEN_PREFIX = "ord_"  # noqa: S105 - the public marker of Ordinaut tokens, not a secret
TOKEN_PREFIX_CHARS = 8
TOKEN_SECRET_BYTES = 32
# last_used_at is a hint for operators, not an audit trail: write it at most this often.
TOKEN_LAST_USED_RESOLUTION_S = 60


def scopes_clean(scopes: list[str] | tuple[str, ...], *, field: str = "scopes") -> list[str]:
    unknown = sorted(set(scopes) - set(ALL_SCOPES))
    if unknown:
        raise ValidationFailed.on(field, f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(ALL_SCOPES)}")
    return sorted(set(scopes))


def scopes_grant_check(*, granter: Agent, scopes: list[str] | tuple[str, ...]) -> None:
    """An agent grants only scopes it holds itself, so agents:admin cannot mint a stronger agent.

    Holding `admin` counts as holding every scope; only an admin can grant `admin`.
    """
    missing = sorted(scope for scope in set(scopes) if not granter.has_scope(scope))
    if missing:
        raise PermissionDenied(
            f"You can grant only scopes you hold yourself; you lack {', '.join(missing)}.",
            fields={"scopes": [f"not held by the caller: {', '.join(missing)}"]},
        )


def agent_manage_check(*, manager: Agent, agent: Agent) -> None:
    """An agent issues tokens for, revokes tokens of, or deactivates only agents no stronger than itself.

    Otherwise agents:admin could issue itself a token of an admin agent.
    """
    if manager.is_admin or manager.pk == agent.pk:
        return
    stronger = sorted(set(agent.scopes) - set(manager.scopes))
    if stronger:
        raise PermissionDenied(
            f"Agent {agent.name!r} holds scopes you lack ({', '.join(stronger)}); only an admin can manage it."
        )


def token_scopes_for(*, issuer: Agent, agent: Agent, scopes: list[str]) -> list[str]:
    """The scopes of a token `issuer` issues for `agent`: never one the issuer's own token lacks.

    agent_manage_check lets an agent manage itself, so without this a token narrowed to
    agents:admin could issue its agent an unrestricted token. Holding `admin` counts as holding
    every scope (a token narrowed without `admin` does not hold it). Named scopes the issuer lacks
    are a 403; no scopes named means every scope of the agent the issuer holds: all of them (stored
    as [], following the agent's scopes) when it holds them all, else exactly those.
    """
    if issuer.is_admin:
        return scopes
    if scopes:
        scopes_grant_check(granter=issuer, scopes=scopes)
        return scopes
    held = sorted(scope for scope in set(agent.scopes) if issuer.has_scope(scope))
    if len(held) == len(set(agent.scopes)):
        return []
    if not held:  # [] would mean all of them
        raise PermissionDenied(f"You hold none of the scopes of agent {agent.name!r}; you cannot issue it a token.")
    return held


def _token_hash(raw: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_prefix() -> str:
    alphabet = "abcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(TOKEN_PREFIX_CHARS))


def token_issue(
    *,
    agent: Agent,
    actor: Actor,
    expires_at: datetime | None = None,
    label: str = "",
    by_agent: Agent | None = None,
    scopes: list[str] | None = None,
) -> tuple[AgentToken, str]:
    """Create a token for an agent; the plain token is returned once and never stored.

    `by_agent`: the agent asking through the API, with the scopes of the token it asked with, held
    to agent_manage_check and token_scopes_for. `scopes` narrows the token to some of the agent's
    scopes (empty or None: all of them, or all the caller may hand out).
    """
    scopes = scopes_clean(scopes or [])
    beyond = sorted(s for s in scopes if not agent.has_scope(s))
    if beyond:
        raise ValidationFailed.on("scopes", f"the agent does not hold {', '.join(beyond)}; a token can only narrow")
    if by_agent is not None:
        agent_manage_check(manager=by_agent, agent=agent)
        scopes = token_scopes_for(issuer=by_agent, agent=agent, scopes=scopes)
    if not agent.is_active:
        raise Conflict(f"Agent {agent.name!r} is deactivated; its tokens would not work.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed.on("expires_at", "must be in the future")
    for _ in range(5):
        prefix = _new_prefix()
        raw = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
        try:
            with transaction.atomic():
                token = AgentToken.objects.create(
                    agent=agent,
                    prefix=prefix,
                    secret_hash=_token_hash(raw),
                    expires_at=expires_at,
                    label=label,
                    scopes=scopes,
                )
                audit_record(
                    actor=actor,
                    action="token.issue",
                    subject_type="agent",
                    subject_id=agent.pk,
                    details={
                        "prefix": prefix,
                        "scopes": scopes,
                        "expires_at": expires_at.isoformat() if expires_at else None,
                    },
                )
            return token, raw
        except IntegrityError:  # prefix collision: astronomically rare, try another
            continue
    raise Conflict("could not allocate a unique token prefix")


def token_revoke(*, token: AgentToken, actor: Actor, by_agent: Agent | None = None) -> None:
    """Revoke a token (revoking a revoked token does nothing). `by_agent`: see token_issue."""
    if by_agent is not None:
        agent_manage_check(manager=by_agent, agent=token.agent)
    with transaction.atomic():
        updated = AgentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if updated:
            audit_record(
                actor=actor,
                action="token.revoke",
                subject_type="agent",
                subject_id=token.agent_id,
                details={"prefix": token.prefix},
            )


def token_update(*, token: AgentToken, actor: Actor, label: str, expires_at: datetime | None) -> AgentToken:
    """Change a token's label or expiry (operators, in the admin); audited as token.update with
    each change's old and new value. Its scopes never change: issue a narrower token instead."""
    with transaction.atomic():
        # Locked so the old values in the audit row are the ones this change replaces.
        current = AgentToken.objects.select_for_update().get(pk=token.pk)
        changes: dict[str, list[Any]] = {}
        if current.label != label:
            changes["label"] = [current.label, label]
        if current.expires_at != expires_at:
            changes["expires_at"] = [_iso(current.expires_at), _iso(expires_at)]
        if changes:
            AgentToken.objects.filter(pk=token.pk).update(label=label, expires_at=expires_at)
            audit_record(
                actor=actor,
                action="token.update",
                subject_type="agent",
                subject_id=current.agent_id,
                details={"prefix": current.prefix, "changes": changes},
            )
    token.refresh_from_db()
    return token


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


@functools.cache
def _token_lookup_sql(vendor: str) -> str:
    """The token and its agent by prefix (unique) in one statement, built once per process: the
    ORM's select_related query cost about 1 ms of CPU a request to compile and load (B4)."""
    del vendor  # the cache key: quote_name is the backend's
    qn = connections[router.db_for_read(AgentToken)].ops.quote_name
    token_table, agent_table = qn(AgentToken._meta.db_table), qn(Agent._meta.db_table)
    columns = [f"{token_table}.{qn(str(f.column))}" for f in AgentToken._meta.concrete_fields]
    columns += [f"{agent_table}.{qn(str(f.column))}" for f in Agent._meta.concrete_fields]
    agent_fk, agent_pk = str(AgentToken.agent.field.column), str(Agent._meta.pk.column)
    prefix = str(AgentToken._meta.get_field("prefix").column)
    # Identifiers from the models' metadata only; the prefix is a parameter.
    return (
        f"SELECT {', '.join(columns)} FROM {token_table} INNER JOIN {agent_table}"  # noqa: S608
        f" ON ({token_table}.{qn(agent_fk)} = {agent_table}.{qn(agent_pk)})"
        f" WHERE {token_table}.{qn(prefix)} = %s"
    )


def _loaded(model: type[Any], alias: str, connection: Any, values: Sequence[Any]) -> Any:
    """A model instance from its concrete columns' values, converted as the ORM converts them."""
    fields = model._meta.concrete_fields
    converted = []
    for field, value in zip(fields, values, strict=True):
        column = field.cached_col  # the backend's converters take an expression (SQLite's read its output_field)
        for converter in connection.ops.get_db_converters(column) + column.get_db_converters(connection):
            value = converter(value, column, connection)
        converted.append(value)
    return model.from_db(alias, [f.attname for f in fields], converted)


def _token_lookup(prefix: str) -> AgentToken | None:
    """AgentToken.objects.select_related("agent").filter(prefix=prefix).first(), in one plain statement."""
    alias = router.db_for_read(AgentToken)
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(_token_lookup_sql(connection.vendor), [prefix])
        row = cursor.fetchone()
    if row is None:
        return None
    split = len(AgentToken._meta.concrete_fields)
    token: AgentToken = _loaded(AgentToken, alias, connection, row[:split])
    token.agent = _loaded(Agent, alias, connection, row[split:])
    return token


def token_authenticate(raw: str) -> tuple[Agent, AgentToken] | None:
    """The active agent and usable token behind a presented bearer token, or None."""
    if not raw.startswith(TOKEN_PREFIX):
        return None
    prefix = raw[len(TOKEN_PREFIX) :].split("_", 1)[0]
    # Only the alphabet of _new_prefix: anything else (NUL bytes included) cannot match, so no query.
    if len(prefix) != TOKEN_PREFIX_CHARS or not prefix.isalnum() or not prefix.isascii():
        return None
    token = _token_lookup(prefix)
    if token is None or not hmac.compare_digest(token.secret_hash, _token_hash(raw)):
        return None
    now = timezone.now()
    if not token.is_usable(now) or not token.agent.is_active:
        return None
    if token.last_used_at is None or now - token.last_used_at > timedelta(seconds=TOKEN_LAST_USED_RESOLUTION_S):
        AgentToken.objects.filter(pk=token.pk).update(last_used_at=now)
    agent = token.agent
    if token.scopes:
        # A narrowed token: for this request the agent holds only the token's scopes (and never
        # more than the agent itself, should the agent have lost some since the token was issued).
        agent.scopes = [scope for scope in token.scopes if scope in agent.scopes or SCOPE_ADMIN in agent.scopes]
    return agent, token


def agent_create(
    *,
    name: str,
    scopes: list[str],
    actor: Actor,
    contact: str = "",
    admin: bool = False,
    by_agent: Agent | None = None,
) -> Agent:
    """Create an agent. `by_agent`: the agent asking through the API, held to scopes_grant_check."""
    scopes = list(ALL_SCOPES) if admin else scopes_clean(scopes)
    if by_agent is not None:
        scopes_grant_check(granter=by_agent, scopes=scopes)
    if admin and SCOPE_ADMIN not in scopes:
        scopes.append(SCOPE_ADMIN)
    name = name.strip()
    if not name:
        raise ValidationFailed.on("name", "must not be empty")
    problem = display_name_problem(name)
    if problem:
        raise ValidationFailed.on("name", problem)
    try:
        with transaction.atomic():
            agent = Agent.objects.create(name=name, scopes=scopes, contact=contact)
            audit_record(
                actor=actor,
                action="agent.create",
                subject_type="agent",
                subject_id=agent.pk,
                details={"scopes": scopes},
            )
    except IntegrityError:
        raise Conflict(f"an agent named {name!r} already exists", fields={"name": ["already exists"]}) from None
    return agent


def agent_update(*, agent: Agent, actor: Actor, fields: list[str]) -> None:
    """Save an operator's edit of an agent (the admin form has set the fields on `agent`); its
    is_active goes through agent_deactivate and agent_reactivate instead."""
    if not fields:
        return
    agent.scopes = scopes_clean(agent.scopes or [])
    with transaction.atomic():
        agent.save(update_fields=fields)
        audit_record(
            actor=actor,
            action="agent.update",
            subject_type="agent",
            subject_id=agent.pk,
            details={"fields": sorted(fields), "scopes": agent.scopes},
        )


def _answers(signal: Any, **kwargs: Any) -> list[str]:
    """Send an owner signal and gather the task ids its receivers report (tasks/ connects them)."""
    ids: list[str] = []
    for _, answer in signal.send(sender=Agent, **kwargs):
        ids.extend(answer or [])
    return ids


def agent_reactivate(*, agent: Agent, actor: Actor) -> None:
    """An operator brings a deactivated agent back: its unrevoked, unexpired tokens work again, and
    the tasks its deactivation paused (listed in that agent.deactivate audit row) are resumed, from
    their next occurrence (no backfill), by tasks/' receiver of agent_reactivated. Tasks paused
    otherwise stay paused. Reactivating an active agent does nothing."""
    with transaction.atomic():
        updated = Agent.objects.filter(pk=agent.pk, is_active=False).update(is_active=True, deactivated_at=None)
        if not updated:
            return
        deactivation = (
            AuditLog.objects.filter(action="agent.deactivate", subject_type="agent", subject_id=str(agent.pk))
            .order_by("-at", "-id")
            .first()
        )
        paused = deactivation.details.get("paused_tasks", []) if deactivation is not None else []
        resumed = _answers(agent_reactivated, agent=agent, actor=actor, task_ids=paused)
        audit_record(
            actor=actor,
            action="agent.reactivate",
            subject_type="agent",
            subject_id=agent.pk,
            details={"resumed_tasks": resumed},
        )


def agent_deactivate(*, agent: Agent, actor: Actor, by_agent: Agent | None = None) -> None:
    """Agents are never deleted (their tasks and audit trail stay); they stop authenticating, and
    their active tasks are paused by tasks/' receiver of agent_deactivated (each audited as
    task.pause by `actor`; the agent.deactivate row lists them, for agent_reactivate). The fire path
    also refuses tasks of an inactive owner.

    Deactivating an inactive agent does nothing. `by_agent`: see token_issue.
    """
    if by_agent is not None:
        agent_manage_check(manager=by_agent, agent=agent)
    with transaction.atomic():
        updated = Agent.objects.filter(pk=agent.pk, is_active=True).update(
            is_active=False, deactivated_at=timezone.now()
        )
        if not updated:
            return
        paused = _answers(agent_deactivated, agent=agent, actor=actor)
        audit_record(
            actor=actor,
            action="agent.deactivate",
            subject_type="agent",
            subject_id=agent.pk,
            details={"paused_tasks": paused},
        )
