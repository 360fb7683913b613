"""Creating runs: one builder for a run row and its steps, inserted one at a time (an actor's request,
a replay) or in bulk (the scheduler's and the events consumer's occurrences)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from ordinaut_site.audit import SYSTEM, Actor, audit_record
from ordinaut_site.errors import Conflict
from pipelines.spec import step_id_of

from ..metrics import runs_created
from ..models import Run, StepRun
from .deadlines import jitter_parked, logical_now, queued_deadline
from .dispatch import dispatch_on_commit

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from tasks.models import Task

# Rows the existence check after a bulk insert names per query (SQLite's variable limit is far above).
INSERT_CHECK_BATCH = 1000


class RunAlreadyExists(Conflict):
    """A run for this (task, trigger_key) exists: the occurrence already ran or is running."""


def run_context(
    *, params: dict[str, Any], event: dict[str, Any] | None = None, now: str | None = None
) -> dict[str, Any]:
    """What a run keeps for its steps' templates: params, the event that triggered it, its logical now."""
    return {"params": params, "event": event, "now": now}


@dataclass(frozen=True)
class NewRun:
    """Everything that decides a new run's row. Queued runs are sent after commit, unless `hold`
    (overlap=queue: they wait, queued without a deadline, for their turn) or their jitter is held
    in the database; skipped runs (a skip_reason) are finished at once and have no steps."""

    task: Task
    trigger: str
    trigger_key: str
    context: dict[str, Any]
    pipeline: list[dict[str, Any]]
    scheduled_for: datetime | None = None
    skip_reason: str = ""
    jitter_seconds: float = 0
    hold: bool = False
    replay_of: Run | None = None
    start_index: int = 0
    reused: Sequence[StepRun] = ()
    # Fired this many seconds ahead of its instant (ORDINAUT_DISPATCH_LEAD_S): created scheduled,
    # its first step sent with that countdown; what depends on the instant is decided then.
    early_s: float = 0

    @property
    def skipped(self) -> bool:
        return bool(self.skip_reason)

    @property
    def sending(self) -> bool:
        """Whether a chain is sent after commit (counted in dispatch_count when it has steps)."""
        return not self.skipped and not self.hold and not jitter_parked(self.early_s + self.jitter_seconds)


def _build(new: NewRun, now: datetime) -> Run:
    return Run(
        id=uuid.uuid4(),
        task=new.task,
        trigger=new.trigger,
        trigger_key=new.trigger_key,
        scheduled_for=new.scheduled_for,
        status=Run.Status.SKIPPED if new.skipped else Run.Status.SCHEDULED if new.early_s else Run.Status.QUEUED,
        skip_reason=new.skip_reason,
        context=new.context,
        pipeline=new.pipeline,
        replay_of=new.replay_of,
        jitter_seconds=new.jitter_seconds,
        current_step=new.start_index,
        dispatch_count=1 if new.sending and new.start_index < len(new.pipeline) else 0,
        finished_at=now if new.skipped else None,
        deadline_at=None if new.skipped or new.hold else queued_deadline(now, new.early_s + new.jitter_seconds),
    )


def _steps(run: Run, reused: Sequence[StepRun] = ()) -> list[StepRun]:
    """A run's step rows: pending, or copied from an earlier run (a replay from the failed step).
    A skipped run never executes, so it has none."""
    if run.status == Run.Status.SKIPPED:
        return []
    reused_by_index = {step.index: step for step in reused}
    return [
        _reused_step(run, reused_by_index[index])
        if index in reused_by_index
        else StepRun(run=run, index=index, step_id=step_id_of(step, index), uses=str(step.get("uses", "")))
        for index, step in enumerate(run.pipeline)
    ]


def _reused_step(run: Run, old: StepRun) -> StepRun:
    return StepRun(
        run=run,
        index=old.index,
        step_id=old.step_id,
        uses=old.uses,
        status=old.status,
        attempts=0,
        input=old.input,
        output=old.output,
        error=old.error,
        attempt_history=[{"outcome": "reused", "from_run": str(old.run_id)}],
        started_at=old.started_at,
        finished_at=old.finished_at,
        duration_ms=old.duration_ms,
    )


def _send_after_commit(run: Run, new: NewRun) -> None:
    if new.sending:
        dispatch_on_commit(
            run,
            from_index=new.start_index,
            countdown=new.early_s + run.jitter_seconds,
            counted=run.dispatch_count == 1,
        )


def run_insert(new: NewRun, *, actor: Actor = SYSTEM) -> Run:
    """Insert one run and its steps. Raises RunAlreadyExists when its (task, trigger_key) is taken."""
    run = _build(new, timezone.now())
    try:
        with transaction.atomic():
            run.save(force_insert=True)
            StepRun.objects.bulk_create(_steps(run, new.reused))
            if actor.kind != SYSTEM.kind:
                # Runs the system creates (schedules, events) are their own record; an actor's
                # request to run something is an action worth auditing.
                audit_record(
                    actor=actor,
                    action="run.replay" if new.replay_of is not None else "run.create",
                    subject_type="run",
                    subject_id=run.pk,
                    details={"task": str(new.task.pk), "trigger": new.trigger, "trigger_key": new.trigger_key},
                )
            _send_after_commit(run, new)
            if run.status == Run.Status.SKIPPED:
                transaction.on_commit(lambda: runs_created([run]))
    except IntegrityError as exc:
        if Run.objects.filter(task=new.task, trigger_key=new.trigger_key).exists():
            raise RunAlreadyExists(
                f"a run for {new.trigger_key!r} of this task already exists", trigger_key=new.trigger_key
            ) from exc
        raise
    # The line that joins the request (its id, its agent) to the run's lines on the workers.
    logger.info(
        "run %s created (%s, %s)", run.pk, new.trigger, run.status, extra={"run": str(run.pk), "task": str(new.task.pk)}
    )
    return run


def runs_insert(items: Sequence[NewRun]) -> list[Run]:
    """Insert many runs with a few statements (a burst of occurrences at one instant is the
    scheduler's hardest moment). Runs whose (task, trigger_key) is taken are left out: the unique
    constraint decides, as for one run. Returns the inserted runs; queued ones are sent after
    commit. Call inside a transaction."""
    if not items:
        return []
    now = timezone.now()
    rows = [_build(item, now) for item in items]
    Run.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
    ids = [row.pk for row in rows]
    inserted: set[uuid.UUID] = set()
    for start in range(0, len(ids), INSERT_CHECK_BATCH):
        chunk = ids[start : start + INSERT_CHECK_BATCH]
        inserted.update(Run.objects.filter(pk__in=chunk).values_list("pk", flat=True))
    created = [(row, item) for row, item in zip(rows, items, strict=True) if row.pk in inserted]
    StepRun.objects.bulk_create([step for row, item in created for step in _steps(row, item.reused)], batch_size=1000)
    for row, item in created:
        _send_after_commit(row, item)
    skipped = [row for row, _ in created if row.status == Run.Status.SKIPPED]
    if skipped:
        transaction.on_commit(lambda: runs_created(skipped))
    return [row for row, _ in created]


# --- The callers' shapes ------------------------------------------------------------------------


def run_create(
    *,
    task: Task,
    trigger: str,
    trigger_key: str | None = None,
    scheduled_for: datetime | None = None,
    params: dict[str, Any] | None = None,
    event: dict[str, Any] | None = None,
    actor: Actor = SYSTEM,
    skip_reason: str = "",
    jitter_seconds: float = 0,
    hold: bool = False,
) -> Run:
    """Create a run of the task's pipeline now (run_now, a single occurrence): its params are the
    task's, overridden by `params`. Raises RunAlreadyExists when (task, trigger_key) is taken."""
    return run_insert(
        NewRun(
            task=task,
            trigger=trigger,
            trigger_key=trigger_key or f"{trigger}:{uuid.uuid4()}",
            scheduled_for=scheduled_for,
            context=run_context(
                params={**task.params, **(params or {})},
                event=event,
                now=logical_now(task, scheduled_for) if scheduled_for is not None else None,
            ),
            pipeline=task.pipeline,
            skip_reason=skip_reason,
            jitter_seconds=jitter_seconds,
            hold=hold,
        ),
        actor=actor,
    )


@dataclass(frozen=True)
class ScheduledRun:
    """One occurrence the scheduler (or the events consumer) decided on: a run to create, queued,
    held or skipped. An event's run carries the event, which its steps see as `event`."""

    task: Task
    scheduled_for: datetime
    trigger_key: str
    skip_reason: str = ""
    jitter_seconds: float = 0
    hold: bool = False
    trigger: str = Run.Trigger.SCHEDULE
    event: dict[str, Any] | None = None
    early_s: float = 0

    def new_run(self) -> NewRun:
        return NewRun(
            task=self.task,
            trigger=self.trigger,
            trigger_key=self.trigger_key,
            scheduled_for=self.scheduled_for,
            context=run_context(
                params=self.task.params, event=self.event, now=logical_now(self.task, self.scheduled_for)
            ),
            pipeline=self.task.pipeline,
            skip_reason=self.skip_reason,
            jitter_seconds=self.jitter_seconds,
            hold=self.hold,
            early_s=self.early_s,
        )


def runs_create_scheduled(items: Sequence[ScheduledRun]) -> list[Run]:
    """Create the runs of many occurrences (or events); those that already have a run are left
    alone. Returns the created runs. Call inside a transaction."""
    return runs_insert([item.new_run() for item in items])


def runs_record_skipped(*, task: Task, occurrences: list[tuple[str, datetime]], reason: str) -> int:
    """Record skipped runs (no steps) for (trigger_key, scheduled_for) pairs; pairs that already
    have a run are left alone. Returns how many were recorded."""
    with transaction.atomic():
        created = runs_create_scheduled(
            [ScheduledRun(task=task, scheduled_for=at, trigger_key=key, skip_reason=reason) for key, at in occurrences]
        )
    return len(created)
