"""The tasks app's /health checks (registered in TasksConfig.ready): the events consumer, and beat
(its heartbeat's age and the tasks it parked)."""

from __future__ import annotations

import time
from typing import Any

from ordinaut_site.health import health_redis

from .event_consumer import HEARTBEAT_TTL_S, consumers_alive
from .models import Task
from .scheduler import HEARTBEAT_INTERVAL_S, beat_heartbeat_key

# Beat writes its heartbeat every HEARTBEAT_INTERVAL_S; six missed in a row mean it is not running
# (or not leading: a standby takes over within the leader lock's TTL, a few seconds).
BEAT_SILENT_S = 6 * HEARTBEAT_INTERVAL_S
PARKED_LISTED = 20


def check_events_consumer() -> dict[str, Any]:
    """Is an events consumer (`manage.py consume_events`) alive? Each one beats in Redis every few seconds."""
    client = health_redis()
    try:
        alive = consumers_alive(client)
    finally:
        client.close()
    if not alive:
        return {"ok": False, "error": f"no events consumer beat in the last {HEARTBEAT_TTL_S}s", "consumers": []}
    return {"ok": True, "consumers": sorted(alive), "last_beat_s": min(alive.values())}


def beat_heartbeat_age_s(*, now: float | None = None) -> float | None:
    """Seconds since the leading beat's last heartbeat; None when there is none."""
    client = health_redis()
    try:
        raw: Any = client.get(beat_heartbeat_key())
    finally:
        client.close()
    if raw is None:
        return None
    return round(max(0.0, (time.time() if now is None else now) - float(raw)), 3)


def check_beat() -> dict[str, Any]:
    """Beat is healthy when it beat within BEAT_SILENT_S and has parked no task."""
    age = beat_heartbeat_age_s()
    parked = Task.objects.filter(schedule_parked_at__isnull=False, deleted_at__isnull=True)
    parked_count = parked.count()
    listed = parked.order_by("schedule_parked_at").values_list("pk", flat=True)[:PARKED_LISTED] if parked_count else []
    report: dict[str, Any] = {
        "ok": age is not None and age <= BEAT_SILENT_S and parked_count == 0,
        "heartbeat_age_s": age,
        "parked_tasks": parked_count,
        "parked": [str(pk) for pk in listed],
    }
    problems = []
    if age is None:
        problems.append("no beat heartbeat (beat is not running, or has not led yet)")
    elif age > BEAT_SILENT_S:
        problems.append(f"beat's last heartbeat is {age:.0f}s old (more than {BEAT_SILENT_S:.0f}s)")
    if parked_count:
        problems.append(f"{parked_count} task(s) parked: their schedule cannot be evaluated (see schedule_error)")
    if problems:
        report["error"] = "; ".join(problems)
    return report
