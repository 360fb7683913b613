"""When the sweeper takes over a run, a step's time limits and a run's logical `now`: the timing rules
every run service shares."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from django.conf import settings

if TYPE_CHECKING:
    from tasks.models import Task


def logical_now(task: Task, at: datetime) -> str:
    """A run's `now` as templates see it: `at` in the task's timezone, to the second."""
    return at.astimezone(ZoneInfo(task.timezone)).replace(microsecond=0).isoformat()


def step_timeout_s(*, task: Task, step: dict[str, Any]) -> float:
    """A step's timeout: its own, else the task's default, else the global default; capped."""
    value = step.get("timeout_seconds") or task.timeout_seconds or settings.ORDINAUT_DEFAULT_STEP_TIMEOUT_S
    return float(min(value, settings.ORDINAUT_MAX_STEP_TIMEOUT_S))


def step_timeouts(*, task: Task, pipeline: list[dict[str, Any]]) -> list[float]:
    return [step_timeout_s(task=task, step=step) for step in pipeline]


def grace(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def jitter_parked(jitter_s: float) -> bool:
    """A jitter longer than a broker countdown may be (ORDINAUT_MAX_COUNTDOWN_S, below the
    visibility timeout) is held in the database, like a long wait: no chain is sent, and the
    sweeper sends it once the run's deadline, the end of its jitter, has passed."""
    return jitter_s > settings.ORDINAUT_MAX_COUNTDOWN_S


def queued_deadline(now: datetime, jitter_s: float) -> datetime:
    """When the sweeper takes over a queued run: its jitter plus ORDINAUT_QUEUED_GRACE_S for a
    chain that was sent; the end of the jitter for one held in the database."""
    if jitter_parked(jitter_s):
        return now + grace(jitter_s)
    return now + grace(settings.ORDINAUT_QUEUED_GRACE_S + jitter_s)


def running_deadline(now: datetime, timeout_s: float) -> datetime:
    """When the sweeper calls a running step lost: its timeout plus ORDINAUT_RUNNING_GRACE_S."""
    return now + grace(timeout_s + settings.ORDINAUT_RUNNING_GRACE_S)
