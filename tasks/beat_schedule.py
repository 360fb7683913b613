"""A celery `BaseSchedule` over Ordinaut's occurrence function, so beat rows of every kind can be
turned into celery schedule objects the way django-celery-beat's models are."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from celery import schedules

from .schedules import Schedule

NEVER_S = 365 * 86400.0


class OccurrenceSchedule(schedules.BaseSchedule):
    """Due when an occurrence lies in (last_run_at, now]; the next check is the next occurrence."""

    def __init__(self, occurrence: Schedule, nowfun: Any = None, app: Any = None) -> None:
        super().__init__(nowfun=nowfun, app=app)
        self.occurrence = occurrence

    def now(self) -> datetime:
        nowfun = getattr(self, "nowfun", None)
        return nowfun() if nowfun else datetime.now(UTC)

    def remaining_estimate(self, last_run_at: datetime) -> Any:
        nxt = self.occurrence.next_after(_aware(last_run_at))
        return None if nxt is None else nxt - self.now()

    def is_due(self, last_run_at: datetime) -> schedules.schedstate:
        now = self.now()
        nxt = self.occurrence.next_after(_aware(last_run_at))
        if nxt is None:
            return schedules.schedstate(False, NEVER_S)
        if nxt <= now:
            following = self.occurrence.next_after(now)
            return schedules.schedstate(True, NEVER_S if following is None else (following - now).total_seconds())
        return schedules.schedstate(False, (nxt - now).total_seconds())

    def __repr__(self) -> str:
        return f"<OccurrenceSchedule {self.occurrence.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OccurrenceSchedule) and self.occurrence == other.occurrence

    def __hash__(self) -> int:
        return id(self)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
