"""Schedule expressions: validation, occurrences and descriptions for each schedule kind."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from ordinaut_site.errors import ValidationFailed

from .models import Task

_ZONES: frozenset[str] | None = None


def timezone_validate(name: str) -> ZoneInfo:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones())
    if name not in _ZONES:
        raise ValidationFailed.on("timezone", f"{name!r} is not an IANA timezone name (e.g. Europe/Chisinau)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed.on("timezone", f"{name!r} is not an IANA timezone name") from None


def schedule_validate(*, kind: str, expr: str, tz: str) -> str:
    """The normalised expression for a kind, or ValidationFailed naming the field."""
    timezone_validate(tz)
    expr = (expr or "").strip()
    if kind == Task.Kind.MANUAL:
        return ""
    if not expr:
        raise ValidationFailed.on("schedule_expr", f"is required for schedule_kind {kind!r}")
    return expr
