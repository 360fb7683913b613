"""Task services: create, change, pause/resume/cancel/snooze/delete, run now, and fire occurrences.
They are the only writers of Task rows, and call tasks/beat.py so beat rows follow every change."""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone as dj_timezone

from ordinaut_site.audit import SYSTEM, Actor, audit_record
from ordinaut_site.errors import Conflict, ExpressionTooExpensive, ValidationFailed
from ordinaut_site.models import Agent
from ordinaut_site.parsers import display_name_problem
from pipelines.spec import payload_validate
from pipelines.templates import condition_error, condition_evaluate
from runs.metrics import runs_created
from runs.models import Run
from runs.services import (
    ScheduledRun,
    run_cancel,
    run_create,
    run_scheduled_hold,
    run_scheduled_skip,
    run_scheduled_start,
    run_start_held,
    runs_create_scheduled,
    runs_record_skipped,
)

from .beat import beat_rows_sync
from .models import Task
from .schedules import SCHEDULED_KINDS, Schedule, next_due, parse_schedule, schedule_validate
from .schedules import next_run as schedule_next_run

logger = logging.getLogger(__name__)

# An occurrence fired further ahead of its instant than the dispatch lead (beat's clock ahead of
# this worker's, or a test's) is fired as due now, as without a lead; this much slack is allowed.
EARLY_TOLERANCE_S = 1.0

MAX_SNOOZE_S = 366 * 86400
# The skip reason of an occurrence whose task condition spent its expression budget (Run.skip_reason
# holds 16 characters: expression_too_expensive does not fit).
EXPR_BUDGET_SKIP_REASON = "expr_budget"
SCHEDULE_FIELDS = ("schedule_kind", "schedule_expr", "timezone")


def catchup_window_s(task: Task) -> int:
    """How late an occurrence may still run. A late beat tick or a busy worker is not downtime,
    so occurrences within ORDINAUT_MISSED_GRACE_S run even when the task's window is smaller."""
    return max(task.catchup_window_seconds, settings.ORDINAUT_MISSED_GRACE_S)


def schedule_trigger_key(scheduled_for: datetime) -> str:
    return "schedule:" + scheduled_for.astimezone(UTC).isoformat().replace("+00:00", "Z")


def task_schedule(task: Task) -> Schedule | None:
    return parse_schedule(task.schedule_kind, task.schedule_expr, task.timezone)


def next_run(task: Task, schedule: Schedule | None) -> datetime | None:
    """When the task will next run: a pending snooze wake-up, else the next occurrence after
    beat's cursor. None for paused, finished, event and manual tasks."""
    if schedule is None or task.status != Task.Status.ACTIVE or task.deleted_at is not None:
        return None
    return schedule_next_run(schedule, cursor=task.fired_through or dj_timezone.now(), wake=task.snoozed_until)


def _reset_cursor(task: Task, now: datetime) -> None:
    """Start the schedule afresh at `now`: nothing before it is owed, nothing after it has fired."""
    task.fired_through = now
    task.schedule_version = (task.schedule_version or 0) + 1
    task.next_run_at = next_run(task, task_schedule(task))


def _clean(task: Task, now: datetime) -> None:
    problem = display_name_problem(task.title)
    if problem:
        raise ValidationFailed.on("title", problem)
    task.payload = payload_validate(task.payload)
    task.schedule_expr = schedule_validate(kind=task.schedule_kind, expr=task.schedule_expr, tz=task.timezone, now=now)
    if task.condition:
        problem = condition_error(task.condition)
        if problem:
            raise ValidationFailed.on("condition", problem)


def overlap_default(schedule_kind: str) -> str:
    """The overlap policy of a task that names none: an event task queues (every event is
    processed, in publication order); a clock schedule skips (a late occurrence is stale)."""
    return Task.Overlap.QUEUE if schedule_kind == Task.Kind.EVENT else Task.Overlap.SKIP


def task_create(*, owner: Agent, actor: Actor, fields: dict[str, Any]) -> Task:
    """Create a task from validated API fields; schedule, payload and condition are checked here."""
    now = dj_timezone.now()
    task = Task(owner=owner, **fields)
    if "overlap" not in fields:
        task.overlap = overlap_default(task.schedule_kind)
    _clean(task, now)
    _reset_cursor(task, now)
    with transaction.atomic():
        # The beat rows first: the task's INSERT then carries its periodic_task (no UPDATE after it).
        beat_rows_sync(task)
        task.save(force_insert=True)
        audit_record(
            actor=actor,
            action="task.create",
            subject_type="task",
            subject_id=task.pk,
            details={"title": task.title, "schedule_kind": task.schedule_kind, "schedule_expr": task.schedule_expr},
        )
    return task


def _lock(task: Task) -> None:
    """Re-read the task under a row lock (inside a transaction) before changing it. The caller read
    it earlier: a pause, a PATCH or beat's cursor committed since then is the base of this change,
    not overwritten by the caller's stale copy; a concurrent change waits for this one to commit."""
    task.refresh_from_db(from_queryset=Task.objects.select_for_update())


def task_update(*, task: Task, actor: Actor, fields: dict[str, Any]) -> Task:
    """PATCH: apply the fields, validate the merged task, re-sync the schedule when it changed.
    Only the fields this update touches are written."""
    with transaction.atomic():
        _lock(task)
        if task.deleted_at is not None:
            raise Conflict("The task is deleted.")
        now = dj_timezone.now()
        before = {name: getattr(task, name) for name in SCHEDULE_FIELDS}
        for name, value in fields.items():
            setattr(task, name, value)
        written = set(fields)
        # A task moving between clock and event kinds with the old kind's default overlap gets the
        # new kind's default; an overlap someone chose stays.
        if "overlap" not in fields and task.overlap == overlap_default(before["schedule_kind"]):
            task.overlap = overlap_default(task.schedule_kind)
            written.add("overlap")
        _clean(task, now)
        schedule_changed = any(getattr(task, name) != before[name] for name in SCHEDULE_FIELDS)
        if schedule_changed:
            task.snoozed_until = None
            _reset_cursor(task, now)
            written |= {*SCHEDULE_FIELDS, "snoozed_until", "fired_through", "schedule_version", "next_run_at"}
        task.save(update_fields=sorted(written | {"updated_at"}))
        beat_rows_sync(task)
        audit_record(
            actor=actor,
            action="task.update",
            subject_type="task",
            subject_id=task.pk,
            details={"fields": sorted(fields), "schedule_changed": schedule_changed},
        )
    return task


_PAST = {"pause": "paused", "resume": "resumed", "cancel": "canceled"}


def _transition(task: Task, actor: Actor, action: str, *, to: str, allowed: tuple[str, ...]) -> Task:
    with transaction.atomic():
        _lock(task)  # the status checked below is the one this change replaces
        if task.deleted_at is not None:
            raise Conflict("The task is deleted.")
        if task.status not in allowed:
            raise Conflict(f"A {task.status} task cannot be {_PAST[action]}.", status=task.status)
        now = dj_timezone.now()
        resuming = to == Task.Status.ACTIVE
        # Resume never backfills: the schedule starts again at the next occurrence after now. When
        # there is none (a once task or a COUNT/UNTIL rule whose last occurrence passed while it was
        # paused), nothing would ever fire again: the task is completed, not left active forever.
        # Occurrences that passed while paused get no runs, as on any other resume.
        if resuming and _exhausted_at(task, now):
            to = Task.Status.COMPLETED
        task.status = to
        if resuming:
            task.snoozed_until = None
            _reset_cursor(task, now)
        else:
            task.next_run_at = None
        task.save(
            update_fields=["status", "snoozed_until", "fired_through", "schedule_version", "next_run_at", "updated_at"]
        )
        beat_rows_sync(task)
        audit_record(actor=actor, action=f"task.{action}", subject_type="task", subject_id=task.pk)
        if to == Task.Status.COMPLETED:
            audit_record(
                actor=SYSTEM,
                action="task.complete",
                subject_type="task",
                subject_id=task.pk,
                details={"reason": "resumed after its last occurrence", "resumed_at": now.isoformat()},
            )
    return task


def _exhausted_at(task: Task, now: datetime) -> bool:
    """A time-based schedule with no occurrence after `now`."""
    schedule = task_schedule(task)
    return schedule is not None and schedule.next_after(now) is None


def task_pause(*, task: Task, actor: Actor) -> Task:
    return _transition(task, actor, "pause", to=Task.Status.PAUSED, allowed=(Task.Status.ACTIVE,))


def task_resume(*, task: Task, actor: Actor) -> Task:
    return _transition(task, actor, "resume", to=Task.Status.ACTIVE, allowed=(Task.Status.PAUSED,))


def task_cancel(*, task: Task, actor: Actor) -> Task:
    return _transition(task, actor, "cancel", to=Task.Status.CANCELED, allowed=(Task.Status.ACTIVE, Task.Status.PAUSED))


def task_delete(*, task: Task, actor: Actor) -> None:
    """The task disappears from the API and stops firing; its runs stay readable."""
    with transaction.atomic():
        _lock(task)  # the status is the one committed, e.g. not a completion made meanwhile
        if task.deleted_at is not None:
            return
        task.deleted_at = dj_timezone.now()
        if task.status in (Task.Status.ACTIVE, Task.Status.PAUSED):
            task.status = Task.Status.CANCELED
        task.next_run_at = None
        task.save(update_fields=["deleted_at", "status", "next_run_at", "updated_at"])
        beat_rows_sync(task)
        audit_record(
            actor=actor, action="task.delete", subject_type="task", subject_id=task.pk, details={"title": task.title}
        )


def task_snooze(
    *, task: Task, actor: Actor, delay_seconds: int | None = None, until: datetime | None = None, reason: str = ""
) -> Task:
    """Postpone the next run: to next_run_at + delay_seconds, or to `until`. The postponed run
    happens then; occurrences before it are recorded as skipped runs (reason `snoozed`)."""
    if (delay_seconds is None) == (until is None):
        raise ValidationFailed(
            "Give exactly one of delay_seconds or until.", fields={"delay_seconds": ["give delay_seconds or until"]}
        )
    with transaction.atomic():
        _lock(task)  # the next run postponed here is the one of the schedule as committed
        target = _snooze_target(task, delay_seconds, until)
        task.snoozed_until = target
        task.next_run_at = target
        task.schedule_version = (task.schedule_version or 0) + 1
        task.save(update_fields=["snoozed_until", "next_run_at", "schedule_version", "updated_at"])
        beat_rows_sync(task)
        audit_record(
            actor=actor,
            action="task.snooze",
            subject_type="task",
            subject_id=task.pk,
            details={"until": target.isoformat(), "reason": reason[:500]},
        )
    return task


def _snooze_target(task: Task, delay_seconds: int | None, until: datetime | None) -> datetime:
    if task.deleted_at is not None or task.status != Task.Status.ACTIVE:
        raise Conflict(f"Only active tasks can be snoozed; this one is {task.status}.")
    if task.schedule_kind not in SCHEDULED_KINDS:
        raise Conflict(f"A {task.schedule_kind} task has no schedule to snooze.")
    base = next_run(task, task_schedule(task))
    if base is None:
        raise Conflict("The task has no next run to snooze.")
    if delay_seconds is not None:
        if not 1 <= delay_seconds <= MAX_SNOOZE_S:
            raise ValidationFailed.on("delay_seconds", f"must be 1..{MAX_SNOOZE_S}")
        return base + timedelta(seconds=delay_seconds)
    assert until is not None
    if until.tzinfo is None:
        raise ValidationFailed.on("until", "needs a UTC offset (e.g. 2026-12-01T09:00:00+02:00)")
    if until <= base:
        raise ValidationFailed.on("until", f"must be after the next run ({base.isoformat()})")
    if until > dj_timezone.now() + timedelta(seconds=MAX_SNOOZE_S):
        raise ValidationFailed.on("until", "is more than a year away")
    return until.astimezone(UTC)


def task_run_now(
    *, task: Task, actor: Actor, params: dict[str, Any] | None = None, idempotency_key: str | None = None
) -> Run:
    """A manual run, whatever the schedule; a paused task may still be run by hand."""
    if task.deleted_at is not None:
        raise Conflict("The task is deleted.")
    if task.status == Task.Status.CANCELED:
        raise Conflict("The task is canceled; it cannot run.")
    if not task.owner.is_active:
        raise Conflict("The task's owner is deactivated; its tasks do not run.")
    trigger_key = f"manual:{idempotency_key}" if idempotency_key else None
    run = run_create(task=task, trigger=Run.Trigger.MANUAL, trigger_key=trigger_key, params=params, actor=actor)
    _touch_last_run(task.pk, run.created_at)
    return run


def _touch_last_run(task_id: Any, at: datetime) -> None:
    Task.objects.filter(pk=task_id).filter(Q(last_run_at__lt=at) | Q(last_run_at__isnull=True)).update(last_run_at=at)


# --- Firing (the tasks.fire jobs on a worker, and the events consumer) ----------------------


@dataclass(frozen=True)
class Occurrence:
    """One reason to run a task: a scheduled instant, or an event (`at` is then its publication
    time, which becomes the run's scheduled_for and logical `now`)."""

    task_id: Any
    at: datetime
    trigger_key: str
    trigger: str = Run.Trigger.SCHEDULE
    event: dict[str, Any] | None = None


def _scheduled(task_id: Any, at: datetime) -> Occurrence:
    return Occurrence(task_id=task_id, at=at, trigger_key=schedule_trigger_key(at))


def event_trigger_key(event_id: Any) -> str:
    return f"event:{event_id}"


def _condition_context(task: Task, scheduled_for: datetime, event: dict[str, Any] | None = None) -> dict[str, Any]:
    row = (
        Run.objects.filter(task=task)
        .exclude(status=Run.Status.SKIPPED)
        .order_by("-created_at")
        .values("id", "status", "result", "scheduled_for", "finished_at")
        .first()
    )
    last: dict[str, Any] | None = None
    if row is not None:
        last = {k: (v.isoformat() if isinstance(v, datetime) else str(v) if k == "id" else v) for k, v in row.items()}
    return {
        "task": {"id": str(task.pk), "title": task.title, "params": task.params, "timezone": task.timezone},
        "event": event,
        "last_run": last,
        "now": scheduled_for.astimezone(ZoneInfo(task.timezone)).isoformat(),
    }


def _skip_reason(task: Task, occurrence: Occurrence, now: datetime) -> str:
    scheduled_for = occurrence.at
    if task.snoozed_until is not None and scheduled_for < task.snoozed_until:
        return "snoozed"
    # An event is never "missed": one that waited for the consumer (down, or behind) still runs.
    if occurrence.event is None and (now - scheduled_for).total_seconds() > catchup_window_s(task):
        return "missed"
    if task.condition:
        try:
            holds, _ = condition_evaluate(task.condition, _condition_context(task, scheduled_for, occurrence.event))
        except ExpressionTooExpensive as exc:  # stopped in bounded time; the batch's other tasks fire
            logger.warning("condition of task %s spent its budget: %s", task.pk, exc.message)
            return EXPR_BUDGET_SKIP_REASON
        except Exception as exc:  # a condition that cannot be evaluated does not run the task
            logger.warning("condition of task %s failed: %s", task.pk, exc)
            return "condition"
        if not holds:
            return "condition"
    return ""


def task_fire(*, task_id: Any, scheduled_for: datetime, now: datetime | None = None) -> Run | None:
    """Create the run for one occurrence (or a skipped run saying why not). A second delivery of
    the same occurrence creates nothing: the run's trigger key is unique per task."""
    with transaction.atomic():
        created = occurrences_fire([_scheduled(task_id, scheduled_for)], now or dj_timezone.now())
    return created[0] if created else None


def task_fire_event(
    *, task_ids: Iterable[Any], event: dict[str, Any], published_at: datetime, now: datetime | None = None
) -> list[Run]:
    """Create the runs of one event for the tasks it matched (or skipped runs saying why not), with
    the scheduler's policies: condition over {task, event, last_run, now}, overlap, jitter. The
    trigger key `event:<id>` is unique per task, so delivering the event again creates nothing.
    Call inside a transaction."""
    occurrences = [
        Occurrence(
            task_id=task_id,
            at=published_at,
            trigger_key=event_trigger_key(event["id"]),
            trigger=Run.Trigger.EVENT,
            event=event,
        )
        for task_id in task_ids
    ]
    return occurrences_fire(occurrences, now or dj_timezone.now())


def task_fire_batch(
    *, occurrences: list[tuple[Any, datetime]], now: datetime | None = None
) -> list[tuple[Any, datetime]]:
    """Fire several occurrences with a few statements. Returns the occurrences to try again
    later: those the database could not take (firing is idempotent, a retry duplicates nothing)."""
    try:
        with transaction.atomic():
            _bound_lock_waits()
            occurrences_fire([_scheduled(task_id, at) for task_id, at in occurrences], now or dj_timezone.now())
        return []
    except (OperationalError, InterfaceError) as exc:
        if _lock_timed_out(exc):
            raise FireBlocked(f"waited over {_lock_timeout_s():g}s for a task's row lock") from exc
        logger.warning("firing %d occurrence(s): database unavailable (%s)", len(occurrences), exc)
        return list(occurrences)
    except SoftTimeLimitExceeded:
        raise  # the job's time limit (tasks/jobs.py) splits the batch, not this
    except Exception:
        logger.exception("firing a batch failed; firing its occurrences one by one")
    again: list[tuple[Any, datetime]] = []
    for task_id, scheduled_for in occurrences:  # so one bad task cannot take the others with it
        try:
            task_fire(task_id=task_id, scheduled_for=scheduled_for, now=now)
        except (OperationalError, InterfaceError):
            again.append((task_id, scheduled_for))
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.exception("firing %s of task %s failed", scheduled_for.isoformat(), task_id)
    return again


def _uuid_or_none(value: Any) -> str | None:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        logger.error("fire for %r: not a task id", value)
        return None


class FireBlocked(Exception):
    """A fire waited too long for a task's row lock (another transaction holds it): its statement
    ended, its locks went with its rollback, and the job fires the batch's occurrences one by one."""


def _lock_timeout_s() -> float:
    return max(0.5, settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S / 3)


def _lock_timed_out(exc: Exception) -> bool:
    return getattr(getattr(exc, "__cause__", None), "sqlstate", None) == "55P03"  # lock_not_available


def _bound_lock_waits() -> None:
    """Within a fire batch's transaction, a lock wait ends (an error) after a third of the fire job's
    soft time limit. A time limit interrupting a statement that waits for one row lock would leave
    it waiting on the server, still holding the locks it took before (other tasks' rows)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{int(_lock_timeout_s() * 1000)}ms"])


def occurrences_fire(occurrences: list[Occurrence], now: datetime) -> list[Run]:
    """Decide each occurrence (run, hold, or skip with a reason) and create the runs in bulk; the
    one way runs of schedules and events come to be (task_fire, task_fire_batch, task_fire_event,
    the events consumer's batches). Returns the runs created (a duplicate trigger key creates none).
    Call inside a transaction."""
    wanted = [(key, occurrence) for key, occurrence in ((_uuid_or_none(o.task_id), o) for o in occurrences) if key]
    # Lock the tasks (in id order, so two batches never deadlock): overlap, snooze and completion
    # decisions must see the runs of earlier fires of the same task.
    tasks = {
        str(task.pk): task
        # Not the tasks of a deactivated owner: deactivation pauses them, but an admin may resume
        # one. of=self: the owners' rows are read, not locked.
        for task in Task.objects.select_for_update(of=("self",))
        .filter(
            pk__in={key for key, _ in wanted},
            deleted_at__isnull=True,
            status=Task.Status.ACTIVE,
            owner__is_active=True,
        )
        .order_by("pk")
    }
    active: dict[str, list[Run | None]] = defaultdict(list)
    with_overlap = [key for key, task in tasks.items() if task.overlap != Task.Overlap.ALLOW]
    for run in Run.objects.filter(task_id__in=with_overlap, status__in=Run.ACTIVE):
        active[str(run.task_id)].append(run)

    items: list[ScheduledRun] = []
    for key, occurrence in sorted(wanted, key=lambda pair: pair[1].at):
        task = tasks.get(key)
        if task is None:
            continue  # deleted, paused, canceled, completed or its owner deactivated since it was sent
        # A run with no steps has no first step to wait with: it is decided now, as one due.
        early_s = (occurrence.at - now).total_seconds() if occurrence.event is None and task.pipeline else 0.0
        if 0 < early_s <= settings.ORDINAUT_DISPATCH_LEAD_S + EARLY_TOLERANCE_S:
            # Fired ahead of its instant (ORDINAUT_DISPATCH_LEAD_S): created scheduled, its first
            # step sent with an ETA at the instant, where task_start_scheduled decides the rest.
            jitter = round(random.uniform(0, task.jitter_seconds), 3) if task.jitter_seconds else 0.0
            items.append(
                ScheduledRun(
                    task=task,
                    scheduled_for=occurrence.at,
                    trigger_key=occurrence.trigger_key,
                    jitter_seconds=jitter,
                    trigger=occurrence.trigger,
                    early_s=early_s,
                )
            )
            continue
        reason = _skip_reason(task, occurrence, now)
        hold = False
        if not reason and task.overlap != Task.Overlap.ALLOW and active[key]:
            if task.overlap == Task.Overlap.SKIP:
                reason = "overlap"
            elif task.overlap == Task.Overlap.QUEUE:
                hold = True  # starts when the runs before it have finished (task_release_held)
            else:  # cancel_previous
                for previous in active[key]:
                    if previous is not None:
                        with contextlib.suppress(Conflict):  # it finished meanwhile
                            run_cancel(run=previous, actor=Actor.system("overlap=cancel_previous"))
                active[key] = []
        jitter = round(random.uniform(0, task.jitter_seconds), 3) if task.jitter_seconds and not reason else 0.0
        items.append(
            ScheduledRun(
                task=task,
                scheduled_for=occurrence.at,
                trigger_key=occurrence.trigger_key,
                skip_reason=reason,
                jitter_seconds=jitter,
                hold=hold,
                trigger=occurrence.trigger,
                event=occurrence.event,
            )
        )
        if not reason:
            active[key].append(None)  # a later occurrence of this task in the batch sees it active

    created = runs_create_scheduled(items)
    latest: dict[str, datetime] = {}
    touched: dict[str, Task] = {}
    for run in created:
        assert run.scheduled_for is not None
        key, at = str(run.task_id), run.scheduled_for
        latest[key] = max(latest.get(key, at), at)
        task = tasks[key]
        if run.status != Run.Status.SKIPPED and (task.last_run_at is None or at > task.last_run_at):
            task.last_run_at = at
            touched[key] = task
    # Rows are locked above, so no update is lost; a batch usually holds one or two instants.
    by_time: dict[datetime, list[str]] = defaultdict(list)
    for key, task in touched.items():
        assert task.last_run_at is not None
        by_time[task.last_run_at].append(key)
    for at, keys in by_time.items():
        Task.objects.filter(pk__in=keys).update(last_run_at=at)
    for key, at in latest.items():
        _complete_if_exhausted(tasks[key], at)
    if len(created) < len(items):
        logger.info("%d occurrence(s) already had a run", len(items) - len(created))
    return created


def task_start_scheduled(*, run: Run, now: datetime | None = None) -> None:
    """The instant of a run fired ahead of it has come (its first step starts): decide, under the
    task's lock as a fire does, what fire would have decided at the instant. Skipped (with the
    reason) when the task was deleted, canceled or paused, its owner deactivated, the schedule no
    longer has this instant (`rescheduled`), or snooze, catch-up, condition or overlap say so; held
    for its turn (overlap=queue); else it starts (after canceling the runs before it, for
    overlap=cancel_previous)."""
    now = now or dj_timezone.now()
    assert run.scheduled_for is not None
    with transaction.atomic():
        # Unordered and sliced, not first(): no ORDER BY to compile (Task's default ordering).
        locked = Task.objects.select_for_update(of=("self",)).select_related("owner").filter(pk=run.task_id)
        task = next(iter(locked.order_by()[:1]), None)
        reason = _start_refusal(task, run.scheduled_for)
        if not reason and task is not None:
            reason = _skip_reason(task, _scheduled(task.pk, run.scheduled_for), now)
        if reason:
            _skip_scheduled(run, reason)
            return
        assert task is not None
        if task.overlap != Task.Overlap.ALLOW:
            others = Run.objects.filter(task_id=task.pk, status__in=Run.ACTIVE).exclude(pk=run.pk).order_by()
            if task.overlap in (Task.Overlap.SKIP, Task.Overlap.QUEUE) and others.exists():
                if task.overlap == Task.Overlap.SKIP:
                    _skip_scheduled(run, "overlap")
                else:
                    run_scheduled_hold(run=run)
                return
            for previous in others if task.overlap == Task.Overlap.CANCEL_PREVIOUS else ():
                with contextlib.suppress(Conflict):  # it finished meanwhile
                    run_cancel(run=previous, actor=Actor.system("overlap=cancel_previous"))
        run_scheduled_start(run=run)


def _skip_scheduled(run: Run, reason: str) -> None:
    if run_scheduled_skip(run=run, reason=reason):
        transaction.on_commit(lambda: runs_created([run]))  # counted as a run created skipped is


def _start_refusal(task: Task | None, scheduled_for: datetime) -> str:
    """Why a task no longer runs an occurrence it was fired for, if it does not."""
    if task is None or task.deleted_at is not None:
        return "deleted"
    if task.status == Task.Status.CANCELED:
        return "canceled"
    if task.status == Task.Status.PAUSED:
        return "paused"
    if not task.owner.is_active:
        return "owner_inactive"
    schedule = task_schedule(task)
    earlier = scheduled_for - timedelta(microseconds=1)
    if schedule is None or next_due(schedule, cursor=earlier, wake=task.snoozed_until) != scheduled_for:
        return "rescheduled"
    return ""


def task_release_held(*, task_id: Any) -> Run | None:
    """overlap=queue: start the task's oldest held run once none of its runs is active (after a
    run ends, and from the sweeper for a release lost with a crashed worker)."""
    with transaction.atomic():
        # The same lock the fire job takes: a run it holds back is either seen by run_start_held
        # or sees that nothing is active any more, so no held run is left behind.
        if not Task.objects.select_for_update().filter(pk=task_id).exists():
            return None
        return run_start_held(task_id=task_id)


def _complete_if_exhausted(task: Task, scheduled_for: datetime) -> None:
    schedule = task_schedule(task)
    if schedule is None or next_due(schedule, cursor=scheduled_for, wake=task.snoozed_until) is not None:
        return  # an occurrence, or the snooze wake-up, is still to come
    Task.objects.filter(pk=task.pk, status=Task.Status.ACTIVE).update(
        status=Task.Status.COMPLETED, next_run_at=None, fired_through=scheduled_for
    )
    task.status = Task.Status.COMPLETED
    beat_rows_sync(task)
    audit_record(
        actor=SYSTEM,
        action="task.complete",
        subject_type="task",
        subject_id=task.pk,
        details={"last_occurrence": scheduled_for.isoformat()},
    )


def task_record_missed(*, task_id: Any, occurrences: list[datetime]) -> int:
    """Skipped runs (reason `missed`) for occurrences older than the catch-up window."""
    task = Task.objects.filter(pk=task_id).first()
    if task is None or not occurrences:
        return 0
    created = runs_record_skipped(
        task=task, occurrences=[(schedule_trigger_key(at), at) for at in occurrences], reason="missed"
    )
    _complete_if_exhausted(task, max(occurrences))
    return created
