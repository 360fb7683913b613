"""Resume: the schedule continues at the next occurrence after now; a schedule that ran out while the
task was paused completes the task instead of leaving it active with nothing to fire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from ordinaut_site.models import AuditLog
from runs.models import Run
from tasks import services
from tasks.models import Task

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Any:
    """clock(at): from now on, Django's `timezone.now()` (the services' clock) says `at`."""

    def move(at: datetime) -> None:
        monkeypatch.setattr(timezone, "now", lambda: at)

    return move


def _tomorrow_0900() -> datetime:
    return (timezone.now() + timedelta(days=1)).astimezone(UTC).replace(hour=9, minute=0, second=0, microsecond=0)


def _audited(task: Task) -> list[str]:
    return list(AuditLog.objects.filter(subject_id=str(task.pk)).order_by("id").values_list("action", flat=True))


def _assert_completed(task: Task) -> None:
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("completed", None)
    assert task.periodic_task is not None
    assert not task.periodic_task.enabled, "beat no longer looks at it"
    assert _audited(task)[-3:] == ["task.pause", "task.resume", "task.complete"]
    assert not Run.objects.filter(task=task).exists(), "resume does not backfill what passed while paused"


def test_once_task_resumed_after_its_time_is_completed(make_task: Any, clock: Any) -> None:
    at = _tomorrow_0900()
    task = services.task_pause(task=make_task("once", at.isoformat()), actor=ACTOR)
    clock(at + timedelta(minutes=1))
    resumed = services.task_resume(task=task, actor=ACTOR)
    assert resumed.status == "completed"
    _assert_completed(task)


def test_rrule_that_ran_out_while_paused_is_completed_on_resume(make_task: Any, clock: Any) -> None:
    start = _tomorrow_0900()
    task = make_task("rrule", f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;COUNT=2")
    services.task_pause(task=task, actor=ACTOR)
    clock(start + timedelta(days=2))
    services.task_resume(task=task, actor=ACTOR)
    _assert_completed(task)


def test_resume_before_the_last_occurrence_continues_at_the_next_one(make_task: Any, clock: Any) -> None:
    start = _tomorrow_0900()
    task = make_task("rrule", f"DTSTART:{start:%Y%m%dT%H%M%SZ}\nRRULE:FREQ=DAILY;COUNT=2")
    services.task_pause(task=task, actor=ACTOR)
    clock(start + timedelta(hours=1))
    services.task_resume(task=task, actor=ACTOR)
    task.refresh_from_db()
    assert (task.status, task.next_run_at) == ("active", start + timedelta(days=1))
    assert task.periodic_task is not None
    assert task.periodic_task.enabled
    assert "task.complete" not in _audited(task)
