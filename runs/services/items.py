"""The items of a `foreach` step: their records, the claim an item job makes, how each item's
attempt ends, and the settling of the step once its items are done (or one failed it).

A foreach step fans out: its step job renders the step's `with` once per item, records the items
(StepItem) and sends them as a Celery group of `max_parallel` chains (lanes), then ends its own
chain. Each item job claims its item as a step job claims its step (claim id = the message id),
calls the tool and records the outcome under a lock of the step's row, so exactly one item job
sees the last item done: that one settles the step (its output is the list of item outputs, in
item order) and sends the rest of the run's chain."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery import chain, current_app, group, signature
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from ordinaut_site.errors import ToolOutputTooLarge
from pipelines.spec import Step
from pipelines.storable import storable_json

from ..job_names import ITEM_JOB_NAME
from ..models import Run, StepItem, StepRun
from .deadlines import grace, running_deadline
from .dispatch import dispatch_on_commit
from .state import After, run_after_step
from .steps import attempt_started, step_fail, step_succeed


@dataclass(frozen=True)
class NewItem:
    """An item to record: its rendered input, or the error that stopped it before any call
    (a template or input-schema problem), and for a replay the earlier run's successful record."""

    input: Any
    error: dict[str, Any] | None = None
    reused: StepItem | None = None


def lock_own_rows(queryset: Any) -> Any:
    """SELECT ... FOR UPDATE of the queryset's own rows where the database has it (SQLite
    serialises writers: its transactions are IMMEDIATE)."""
    features = connection.features
    if not features.has_select_for_update:
        return queryset
    return queryset.select_for_update(of=("self",) if features.has_select_for_update_of else ())


def items_of(step: StepRun) -> Any:
    return StepItem.objects.filter(step_id=step.pk)


def items_record(*, step: StepRun, items: Sequence[NewItem], fan_out: dict[str, Any]) -> None:
    """Record the step's items once (a step claimed again keeps the records it has) and the
    fan-out as the step's input."""
    now = timezone.now()
    rows = []
    for index, new in enumerate(items):
        row = StepItem(step_id=step.pk, index=index, input=new.input)
        if new.reused is not None:  # a replay: the earlier run's success, copied
            old = new.reused
            row.status, row.output, row.attempts = StepItem.Status.SUCCEEDED, old.output, old.attempts
            row.attempt_history, row.started_at = old.attempt_history, old.started_at
            row.finished_at, row.duration_ms = old.finished_at, old.duration_ms
        elif new.error is not None:
            row.status, row.error, row.finished_at, row.duration_ms = StepItem.Status.FAILED, new.error, now, 0
        rows.append(row)
    with transaction.atomic():
        StepItem.objects.bulk_create(rows, ignore_conflicts=True, batch_size=500)
        StepRun.objects.filter(pk=step.pk, status=StepRun.Status.RUNNING).update(input=fan_out)
    step.input = fan_out


def items_exist(step: StepRun) -> bool:
    return bool(items_of(step).exists())


def items_due(*, step: StepRun, now: datetime | None = None) -> list[int]:
    """The items a fan-out (or a re-claimed foreach step) sends: pending ones, and running ones
    whose deadline passed (their job was lost with its worker), which go back to pending."""
    now = now or timezone.now()
    items_of(step).filter(status=StepItem.Status.RUNNING, deadline_at__lte=now).update(
        status=StepItem.Status.PENDING, claim_id=""
    )
    return list(items_of(step).filter(status=StepItem.Status.PENDING).order_by("index").values_list("index", flat=True))


def items_latest_deadline(step: StepRun) -> datetime | None:
    return (
        items_of(step)
        .filter(status=StepItem.Status.RUNNING)
        .order_by("-deadline_at")
        .values_list("deadline_at", flat=True)
        .first()
    )


def items_mark_lost(*, claim_ids: Sequence[str], now: datetime | None = None) -> list[uuid.UUID]:
    """Items whose job was lost (its worker is dead): due now, and their runs' deadlines too, so
    the next sweep re-sends them. Returns the runs concerned."""
    now = now or timezone.now()
    lost = StepItem.objects.filter(status=StepItem.Status.RUNNING, claim_id__in=list(claim_ids))
    run_ids = list(lost.values_list("step__run_id", flat=True).distinct())
    lost.update(deadline_at=now)
    Run.objects.filter(pk__in=run_ids, status=Run.Status.RUNNING).update(deadline_at=now)
    return run_ids


def items_dispatch_on_commit(*, run: Run, index: int, item_indexes: list[int], lanes: int, timeout_s: float) -> None:
    run_id = run.pk
    transaction.on_commit(
        lambda: items_dispatch(run_id=run_id, index=index, item_indexes=item_indexes, lanes=lanes, timeout_s=timeout_s)
    )


def items_dispatch(*, run_id: uuid.UUID, index: int, item_indexes: list[int], lanes: int, timeout_s: float) -> None:
    """Send the items as a group of at most `lanes` chains (item i in lane i mod lanes), so at
    most `lanes` of them run at once across the workers; stamped with the run id (a cancel
    revokes them) and each with the step's timeout as its soft time limit."""
    if not item_indexes:
        return
    lanes = max(1, min(lanes, len(item_indexes)))
    flows = []
    for lane in range(lanes):
        jobs = [
            signature(
                ITEM_JOB_NAME,
                args=(str(run_id), index, item),
                immutable=True,
                app=current_app,
                soft_time_limit=timeout_s,
                time_limit=timeout_s + settings.ORDINAUT_HARD_TIME_LIMIT_GRACE_S,
            )
            for item in item_indexes[lane::lanes]
        ]
        flows.append(chain(*jobs) if len(jobs) > 1 else jobs[0])
    flow = group(flows) if len(flows) > 1 else flows[0]
    flow.stamp(run_id=str(run_id))
    flow.apply_async()


# --- An item job's claim and outcomes ----------------------------------------------------------


@dataclass
class ItemClaim:
    """An item this message now owns, its step, and when this attempt began."""

    item: StepItem
    step: StepRun
    at: datetime


def item_claim(*, run: Run, index: int, item_index: int, claim_id: str, timeout_s: float) -> ItemClaim | None:
    """pending -> running for this message (or the same message again: a retry countdown, a
    redelivery), while its step and run are running. None when another message owns it, it is
    done, or the step or run ended. The item's deadline, and the run's, move past its timeout."""
    now = timezone.now()
    deadline = running_deadline(now, timeout_s)
    found = (
        StepItem.objects.select_related("step")
        .filter(step__run_id=run.pk, step__index=index, index=item_index)
        .order_by()
        .first()
    )
    if found is None or found.step.status != StepRun.Status.RUNNING:
        return None
    # Conditions on the item's own columns only: PostgreSQL re-checks them on the row it waited
    # for, so of two messages racing for one item exactly one wins; the attempt count read is the
    # one written over (a row claimed and reset meanwhile fails the condition).
    won = (
        StepItem.objects.filter(pk=found.pk, attempts=found.attempts)
        .filter(Q(status=StepItem.Status.PENDING) | Q(status=StepItem.Status.RUNNING, claim_id=claim_id))
        .update(
            status=StepItem.Status.RUNNING,
            claim_id=claim_id,
            attempts=found.attempts + 1,
            attempt_history=[*(found.attempt_history or []), attempt_started(found.attempts + 1, now)],
            started_at=Coalesce(F("started_at"), Value(now)),
            deadline_at=deadline,
        )
    )
    if not won:
        return None
    item = StepItem.objects.get(pk=found.pk)
    # A statement of its own, after the claim's commit: no transaction holds both rows.
    Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, deadline_at__lt=deadline).update(deadline_at=deadline)
    return ItemClaim(item=item, step=found.step, at=now)


def _owned(item: StepItem) -> Any:
    return StepItem.objects.filter(pk=item.pk, status=StepItem.Status.RUNNING, claim_id=item.claim_id)


def _ended(started: datetime) -> dict[str, Any]:
    now = timezone.now()
    return {"finished_at": now, "duration_ms": max(0, int((now - started).total_seconds() * 1000)), "deadline_at": None}


def item_retry_later(
    *,
    run: Run,
    claim: ItemClaim,
    error: dict[str, Any],
    history: list[dict[str, Any]],
    delay_s: float,
    timeout_s: float,
) -> bool:
    """The attempt failed transiently: the item stays running under the same claim (the retry
    message has the same id), due only after the delay, its timeout and the grace."""
    deadline = running_deadline(timezone.now() + grace(delay_s), timeout_s)
    won = bool(_owned(claim.item).update(error=error, attempt_history=history, deadline_at=deadline))
    if won:
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, deadline_at__lt=deadline).update(deadline_at=deadline)
    return won


def item_finished(
    *,
    run: Run,
    step: Step,
    claim: ItemClaim,
    history: list[dict[str, Any]],
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> After | None:
    """Record the item's success (or, with `error`, its final failure) and, when that settles the
    step, the step's end and what the run does next (the next steps are sent after commit). None
    when the step goes on (other items are not done) or the claim was lost meanwhile."""
    item = claim.item
    fields = _ended(item.started_at or claim.at)
    if error is None:
        fields.update(status=StepItem.Status.SUCCEEDED, output=output, error=None)
    else:
        fields.update(status=StepItem.Status.FAILED, output=None, error=error)
    with transaction.atomic():
        # The step's row lock orders the item jobs of one step: the last one to record sees every
        # other item done, and settles the step.
        record = lock_own_rows(StepRun.objects.filter(pk=claim.step.pk, status=StepRun.Status.RUNNING)).first()
        if record is None or not _owned(item).update(attempt_history=history, **fields):
            return None
        return items_settle(run=run, step=step, record=record)


def items_settle(*, run: Run, step: Step, record: StepRun, send_next: bool = True) -> After | None:
    """Under the step's row lock: end the step if its items allow it. A failed item fails the step
    at once (unless `on_error: continue`; items not done are skipped); once every item is done the
    step succeeds with the list of item outputs (a failed item's slot holds {"error": ...}).
    `send_next`: send the rest of the run's chain after commit (an item job; the step's own job
    goes on with the chain it is part of)."""
    counts = dict(items_of(record).values_list("status").annotate(n=Count("pk")).order_by())
    if counts.get(StepItem.Status.FAILED) and not step.continues_on_error:
        first = items_of(record).filter(status=StepItem.Status.FAILED).order_by("index").first()
        assert first is not None
        cause = first.error or {}
        error = {
            **cause,
            "code": cause.get("code", "step_failed"),
            "message": f"item {first.index}: {cause.get('message', '')}",
            "item": first.index,
        }
        items_of(record).filter(status__in=[StepItem.Status.PENDING, StepItem.Status.RUNNING]).update(
            status=StepItem.Status.SKIPPED, skip_reason="step_failed", claim_id="", deadline_at=None
        )
        return _step_end(run, record, error=error, send_next=send_next)
    if counts.get(StepItem.Status.PENDING) or counts.get(StepItem.Status.RUNNING):
        return None
    rows = items_of(record).order_by("index").values_list("status", "output", "error")
    outputs = [output if status == StepItem.Status.SUCCEEDED else {"error": error} for status, output, error in rows]
    size = len(storable_json(outputs, prefix="output"))
    if size > settings.ORDINAUT_MAX_STEP_OUTPUT_BYTES:
        problem = ToolOutputTooLarge(
            f"the items' outputs are {size} bytes together; ORDINAUT_MAX_STEP_OUTPUT_BYTES is "
            f"{settings.ORDINAUT_MAX_STEP_OUTPUT_BYTES}"
        )
        return _step_end(run, record, error=problem.as_dict(), send_next=send_next)
    return _step_end(run, record, output=outputs, send_next=send_next)


def _step_end(
    run: Run, record: StepRun, *, output: Any = None, error: dict[str, Any] | None = None, send_next: bool
) -> After | None:
    """The foreach step's end as any step's: its record, then the run by the after-step rule; the
    next steps are sent after commit when the run goes on."""
    last = record.index >= len(run.pipeline) - 1
    if error is not None:
        if not step_fail(step=record, input=record.input, error=error):
            return None
        after = run_after_step(run=run, index=record.index, step_id=record.step_id, failed=True, error=error)
    else:
        if not step_succeed(step=record, input=record.input, output=output, finish_run=run if last else None):
            return None
        after = After.RUN_ENDED if last else After.NEXT_STEP
    if after is After.NEXT_STEP and send_next:
        dispatch_on_commit(run, from_index=record.index + 1)
    return after
