"""Approvals: a step that waits for a human, the decision (approve, pick items, reject) and expiry."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ordinaut_site.audit import SYSTEM, Actor, audit_record
from ordinaut_site.errors import Conflict, ValidationFailed
from pipelines.spec import after_rejection

from ..models import Approval, Run, StepRun
from .deadlines import grace
from .dispatch import dispatch_on_commit
from .state import After, actor_dict, run_after_step, run_succeed, skip_locked
from .steps import history_with, owned_by_claim, step_succeed

MAX_APPROVAL_ITEMS = 1000


def approval_request(
    *, run: Run, step: StepRun, input: Any, message: str, data: Any, timeout_s: float
) -> Approval | None:
    """running -> waiting_approval: the step stays running until a decision or expiry closes it.
    None when the run stopped running meanwhile (canceled)."""
    now = timezone.now()
    with transaction.atomic():
        approval, _ = Approval.objects.get_or_create(
            run=run,
            step_index=step.index,
            defaults={
                "step_id": step.step_id,
                "message": message,
                "data": data,
                "expires_at": now + grace(timeout_s),
            },
        )
        owned_by_claim(step).update(input=input)
        won = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(
            status=Run.Status.WAITING_APPROVAL, deadline_at=None, current_step=step.index
        )
        if not won:
            Approval.objects.filter(pk=approval.pk, status=Approval.Status.PENDING).update(
                status=Approval.Status.CANCELED, decided_at=now
            )
            return None
    return approval


def approval_decide(*, run: Run, approve: bool, actor: Actor, items: list[Any] | None = None, comment: str = "") -> Run:
    """A human decision on the run's pending approval; the rest of the pipeline resumes on a
    fresh chain, or stops after a rejection (see approval_close)."""
    with transaction.atomic():
        # Lock the run row (only it: the task's row belongs to tasks/, and locking it here would
        # queue a decision behind beat's fires): a concurrent cancel, expiry or second decision waits.
        locked = Run.objects.select_for_update(of=("self",)).select_related("task").filter(pk=run.pk).first()
        if locked is None or locked.status != Run.Status.WAITING_APPROVAL:
            status = locked.status if locked else "gone"
            raise Conflict(f"the run is {status}; only a run waiting for approval can be approved or rejected")
        approval = Approval.objects.filter(run=locked, status=Approval.Status.PENDING).order_by("-step_index").first()
        if approval is None:
            raise Conflict("the run has no pending approval")
        if approve:
            approved_items = _approved_items(approval, items)
            status = Approval.Status.APPROVED
        else:
            if items:
                raise ValidationFailed.on("items", "only an approval takes items")
            approved_items, status = [], Approval.Status.REJECTED
        approval_close(run=locked, approval=approval, status=status, items=approved_items, comment=comment, actor=actor)
        audit_record(
            actor=actor,
            action="approval.approve" if approve else "approval.reject",
            subject_type="run",
            subject_id=locked.pk,
            details={
                "approval": str(approval.pk),
                "step_id": approval.step_id,
                "approved_items": len(approved_items),
                "comment": comment[:200],
            },
        )
    locked.refresh_from_db()
    return locked


def approval_items(*, approval: Approval) -> list[Any]:
    """The items an approval asks about: its data's items when the data is a list, else the data
    itself as the one item (none when it has no data)."""
    data = approval.data
    return list(data) if isinstance(data, list) else ([] if data is None else [data])


def _approved_items(approval: Approval, items: list[Any] | None) -> list[Any]:
    """The items approved: all of the approval's items when none are named; otherwise each named
    item must be one of them (approvers pick, they do not edit)."""
    candidates = approval_items(approval=approval)
    if items is None:
        return list(candidates)
    if len(items) > MAX_APPROVAL_ITEMS:
        raise ValidationFailed.on("items", f"at most {MAX_APPROVAL_ITEMS} items")
    keys = {_json_key(candidate) for candidate in candidates}
    for position, item in enumerate(items):
        if _json_key(item) not in keys:
            raise ValidationFailed(
                f"items.{position}: is not one of the items this approval asked about",
                fields={f"items.{position}": ["is not one of the items this approval asked about"]},
            )
    return list(items)


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def approval_close(
    *, run: Run, approval: Approval, status: str, items: list[Any], comment: str, actor: Actor | None
) -> None:
    """Record the decision on the approval and its step, then move the run on (call with the run
    row locked). A decision is not an error: the step succeeds with the decision as its output,
    {status: approved|rejected|expired, approved_items, comment, decided_by, decided_at}. Approved:
    the pipeline resumes. Rejected or expired: the step's `on_reject` decides (see
    pipelines.spec.after_rejection): `continue` resumes the pipeline, whose later `if`s see the
    decision; `stop` skips the remaining steps and the run succeeds with the decision as its result."""
    now = timezone.now()
    decided_by = actor_dict(actor) if actor is not None else None
    Approval.objects.filter(pk=approval.pk).update(
        status=status, decided_at=now, decided_by=decided_by, comment=comment, approved_items=items
    )
    output = {
        "status": status,
        "approved_items": items,
        "comment": comment,
        "decided_by": decided_by,
        "decided_at": now.isoformat(),
    }
    step = StepRun.objects.get(run=run, index=approval.step_index)
    entry = {
        "attempt": max(step.attempts, 1),
        "started_at": approval.created_at.isoformat(),
        "finished_at": now.isoformat(),
        "duration_ms": int((now - approval.created_at).total_seconds() * 1000),
        "outcome": status,
        "error": None,
    }
    step_succeed(step=step, input=step.input, output=output, history=history_with(step.attempt_history, entry))
    if status != Approval.Status.APPROVED and after_rejection(run.pipeline, approval.step_index) == "stop":
        StepRun.objects.filter(run=run, index__gt=approval.step_index, status=StepRun.Status.PENDING).update(
            status=StepRun.Status.SKIPPED, skip_reason=f"approval_{status}", finished_at=now
        )
        run_succeed(run=run, result=output, from_status=Run.Status.WAITING_APPROVAL)
        return
    after = run_after_step(
        run=run,
        index=approval.step_index,
        step_id=approval.step_id,
        failed=False,
        output=output,
        from_status=Run.Status.WAITING_APPROVAL,
    )
    if after is After.RUN_ENDED:
        return
    # The chain ended when the step asked for approval: the rest of the pipeline gets a new one.
    next_index = approval.step_index + 1
    Run.objects.filter(pk=run.pk, status=Run.Status.WAITING_APPROVAL).update(
        status=Run.Status.RUNNING,
        current_step=next_index,
        deadline_at=now + grace(settings.ORDINAUT_QUEUED_GRACE_S),
    )
    dispatch_on_commit(run, from_index=next_index)


def approval_expire(*, run_id: uuid.UUID, now: datetime | None = None) -> bool:
    """Expire the run's pending approval if its time is up (the sweeper calls this)."""
    now = now or timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: a run another sweeper (or a decision) holds is theirs to finish.
        run = (
            skip_locked(Run.objects.select_related("task"))
            .filter(pk=run_id, status=Run.Status.WAITING_APPROVAL)
            .first()
        )
        if run is None:
            return False
        approval = Approval.objects.filter(run=run, status=Approval.Status.PENDING, expires_at__lte=now).first()
        if approval is None:
            return False
        approval_close(run=run, approval=approval, status=Approval.Status.EXPIRED, items=[], comment="", actor=None)
        audit_record(
            actor=SYSTEM,
            action="approval.expire",
            subject_type="run",
            subject_id=run.pk,
            details={"approval": str(approval.pk), "step_id": approval.step_id},
        )
    return True
