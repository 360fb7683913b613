"""Per-agent daily budgets on metered tool calls and cost units (docs/operations.md).

A tool's cost comes from the catalog (default 1). Built-ins that reach nothing outside Ordinaut
(echo, transform, wait, request_approval) cost 0 and are not metered. Each metered call is
charged before it is made, with one conditional upsert: it either fits under both limits and is
counted, or it is refused and the step fails permanently with code `budget_exceeded`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F
from django.utils import timezone

from . import metrics
from .errors import BudgetExceeded
from .models import Agent, AgentUsage

logger = logging.getLogger(__name__)

# One statement: insert or add, but only while both sums stay within the limits (0 = unlimited).
_CHARGE = """
INSERT INTO ordinaut_agentusage (agent_id, day, tool_calls, cost_units, rejected)
SELECT %(agent)s, %(day)s, 1, %(cost)s, 0
WHERE (%(calls_limit)s = 0 OR 1 <= %(calls_limit)s) AND (%(cost_limit)s = 0 OR %(cost)s <= %(cost_limit)s)
ON CONFLICT (agent_id, day) DO UPDATE
SET tool_calls = ordinaut_agentusage.tool_calls + 1,
    cost_units = ordinaut_agentusage.cost_units + EXCLUDED.cost_units
WHERE (%(calls_limit)s = 0 OR ordinaut_agentusage.tool_calls + 1 <= %(calls_limit)s)
  AND (%(cost_limit)s = 0 OR ordinaut_agentusage.cost_units + EXCLUDED.cost_units <= %(cost_limit)s)
RETURNING tool_calls
"""


@dataclass(frozen=True)
class Limits:
    tool_calls: int  # 0 = unlimited
    cost_units: int


def limits_of(agent: Agent) -> Limits:
    calls = agent.tool_calls_per_day
    cost = agent.cost_units_per_day
    return Limits(
        tool_calls=settings.ORDINAUT_BUDGET_TOOL_CALLS_PER_DAY if calls is None else calls,
        cost_units=settings.ORDINAUT_BUDGET_COST_UNITS_PER_DAY if cost is None else cost,
    )


def budget_charge(*, agent: Agent, cost: int, tool: str) -> None:
    """Count one call of a metered tool, or raise BudgetExceeded (and count the refusal)."""
    if cost <= 0:
        return
    limits = limits_of(agent)
    day = timezone.now().date()  # USE_TZ: now() is UTC
    fields = AgentUsage._meta
    params: dict[str, Any] = {
        "agent": fields.get_field("agent").get_db_prep_value(agent.pk, connection),
        "day": fields.get_field("day").get_db_prep_value(day, connection),
        "cost": cost,
        "calls_limit": limits.tool_calls,
        "cost_limit": limits.cost_units,
    }
    with connection.cursor() as cursor:
        cursor.execute(_CHARGE, params)
        charged = cursor.fetchone() is not None
    if charged:
        return
    usage, _ = AgentUsage.objects.get_or_create(agent=agent, day=day)
    AgentUsage.objects.filter(pk=usage.pk).update(rejected=F("rejected") + 1)
    calls_spent = bool(limits.tool_calls) and usage.tool_calls + 1 > limits.tool_calls
    metrics.budget_rejected("tool_calls" if calls_spent else "cost_units")
    logger.warning(
        "budget of agent %s spent for %s: %s calls / %s units (limits %s / %s)",
        agent.name,
        day,
        usage.tool_calls,
        usage.cost_units,
        limits.tool_calls or "none",
        limits.cost_units or "none",
    )
    raise BudgetExceeded(
        f"the daily budget of agent {agent.name!r} is spent ({usage.tool_calls} tool calls, "
        f"{usage.cost_units} cost units today; limits {limits.tool_calls or 'none'} and "
        f"{limits.cost_units or 'none'}); {tool} was not called"
    )


def budget_usage(*, agent: Agent) -> dict[str, Any]:
    """Today's usage against the limits, for GET /agents/me."""
    day = timezone.now().date()
    usage = AgentUsage.objects.filter(agent=agent, day=day).first()
    limits = limits_of(agent)
    return {
        "day": day.isoformat(),
        "tool_calls": {"used": usage.tool_calls if usage else 0, "limit": limits.tool_calls or None},
        "cost_units": {"used": usage.cost_units if usage else 0, "limit": limits.cost_units or None},
        "rejected": usage.rejected if usage else 0,
    }
