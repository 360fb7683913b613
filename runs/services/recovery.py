"""Recovery: the sweeper that re-runs the steps of dead workers (ordinaut_site/liveness.py), re-dispatches
runs past their deadline and expires due approvals, and the start of runs held for their turn
(overlap=queue)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from ordinaut_site import liveness

from ..models import Approval, Run, StepRun
from ..signals import held_runs_found
from .approvals import approval_expire
from .deadlines import grace, jitter_parked, queued_deadline
from .dispatch import dispatch_on_commit
from .items import items_mark_lost
from .state import After, run_after_step, run_mark_running, skip_locked

logger = logging.getLogger(__name__)

# Runs the sweeper re-sends once their deadline passes: a scheduled one's first step message may be
# lost too (its ETA then starts it late, not never).
RECOVERABLE = (Run.Status.SCHEDULED, Run.Status.QUEUED, Run.Status.RUNNING)
# Runs the sweeper handles per pass; the next pass takes the rest.
SWEEP_BATCH = 200


def runs_sweep(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> dict[str, int]:
    """One pass of the recovery sweeper: re-run the steps of workers found dead, expire due
    approvals, then re-dispatch runs whose deadline passed (lost publish, a worker lost without a
    trace, parked wait now due). Safe on several workers."""
    now = now or timezone.now()
    recovered = lost_claims_recover(now=now)
    expired = 0
    due_approvals = (
        Approval.objects.filter(status=Approval.Status.PENDING, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("run_id", flat=True)[:limit]
    )
    for run_id in list(due_approvals):
        expired += approval_expire(run_id=run_id, now=now)
    stuck = (
        Run.objects.filter(status__in=RECOVERABLE, deadline_at__lte=now)
        .order_by("deadline_at")
        .values_list("pk", flat=True)[:limit]
    )
    for run_id in list(stuck):
        recovered += run_recover(run_id=run_id, now=now)
    # Held runs (overlap=queue) whose release was lost with a crashed worker: their task's owner
    # (tasks/) decides whether one may start now.
    waiting = list(held(Run.objects.order_by()).values_list("task_id", flat=True).distinct()[:limit])
    if waiting:
        for _, answer in held_runs_found.send(sender=Run, task_ids=waiting):
            recovered += int(answer or 0)
    if expired or recovered:
        logger.info("sweeper: %s approvals expired, %s runs re-dispatched", expired, recovered)
    return {"approvals_expired": expired, "runs_recovered": recovered}


def lost_claims_recover(*, now: datetime | None = None) -> int:
    """Recover the runs whose running step was claimed by a job of a dead worker (its liveness key
    expired with the job still listed in flight): the step goes back to pending and the run is
    re-dispatched from it, without waiting for its deadline. Each dead worker's ids are forgotten
    once no run still holds one (a run another sweeper had locked is tried at the next pass).
    Returns the runs recovered. Redis away: nothing this pass; the deadlines still hold."""
    try:
        dead = liveness.workers_dead()
    except redis.RedisError as exc:
        logger.warning("sweeper: cannot read worker liveness (%s); dead workers wait for the next pass", exc)
        return 0
    now = now or timezone.now()
    recovered = 0
    for worker in dead:
        if worker.task_ids:
            # foreach items claimed by its jobs: due now, and their runs too, so the deadline pass
            # that follows (runs_sweep, same `now`) re-sends them; the re-claimed step sends only
            # the items lost and pending.
            items_mark_lost(claim_ids=sorted(worker.task_ids), now=now)
            runs = sorted(
                set(runs_with_lost_claims(worker.task_ids)) | set(_runs_with_lost_messages(worker.steps)), key=str
            )
            for run_id in runs:
                recovered += run_recover(run_id=run_id, now=now, lost_claims=worker.task_ids, lost_steps=worker.steps)
            logger.warning(
                "worker %s is dead: %d job(s) were in flight, %d run(s) recovered",
                worker.incarnation,
                len(worker.task_ids),
                len(runs),
            )
            # A run another transaction had locked still holds a lost claim: kept for the next
            # pass. (A re-dispatched step stays pending until claimed, so lost unstarted messages
            # are not looked at again: such a run skipped here is left to its deadline.)
            if runs and runs_with_lost_claims(worker.task_ids):
                continue
        if worker.last_beat is not None:
            recovered += _recover_unsent(worker, now=now)
        try:
            liveness.dead_worker_forget(worker)
        except redis.RedisError as exc:
            logger.warning("sweeper: cannot forget dead worker %s (%s)", worker.incarnation, exc)
    return recovered


# How far a host's clock may be off the clock of the host that wrote a step's finished_at.
CLOCK_MARGIN_S = 2.0
# Runs looked at per dead worker for a next message it may have taken with it.
UNSENT_BATCH = 5000


def _recover_unsent(worker: liveness.DeadWorker, *, now: datetime) -> int:
    """Runs whose next step's message a worker may have taken with it as it died, unlisted: Redis
    hands a message to a consumer's BRPOP before kombu records it anywhere, so one that reaches a
    worker in the instant it dies is gone without a trace (and one taken a moment before
    task_received listed it waits out the visibility timeout). What is left is a running run whose
    step finished, while the worker was dying, and whose next step is pending, claimed by no one,
    sent to no worker that lists it. Re-dispatched from that step now instead of at the run's
    deadline (the step's timeout plus ORDINAUT_RUNNING_GRACE_S): the message may in fact be in the
    queue still, and the claim lets only one of the two run the step. A worker that dies behind a
    backlog pops an older message, whose step finished before this window: that run waits for its
    deadline, as before."""
    assert worker.last_beat is not None
    last = datetime.fromtimestamp(worker.last_beat, tz=UTC)
    # It died after its last beat, most likely before the one after (two heartbeats of slack for a
    # beat that came late), and certainly before its alive key expired.
    died_within = min(settings.ORDINAUT_WORKER_DEAD_AFTER_S, 2 * settings.ORDINAUT_WORKER_HEARTBEAT_S)
    window = (
        last - timedelta(seconds=CLOCK_MARGIN_S),
        last + timedelta(seconds=died_within + CLOCK_MARGIN_S),
    )
    candidates = runs_with_unsent_next(since=window[0], until=window[1])
    if not candidates:
        return 0
    try:
        listed = liveness.steps_listed()
    except redis.RedisError:
        return 0  # the next pass (the worker is forgotten only after this one)
    recovered = 0
    for run_id, index in candidates:
        if (str(run_id), index) not in listed:
            recovered += run_recover(run_id=run_id, now=now, lost_claims=(), unsent_between=window)
    if recovered:
        logger.warning(
            "worker %s is dead: %d run(s) whose next step it may have taken unlisted re-dispatched",
            worker.incarnation,
            recovered,
        )
    return recovered


def runs_with_unsent_next(*, since: datetime, until: datetime) -> list[tuple[uuid.UUID, int]]:
    """(run id, next index) of running runs whose current step finished between `since` and
    `until` and whose next step is pending, and of queued runs created then (sent at their
    creation) whose first step is pending: a chain whose next message is in the queue, or lost."""
    finished = StepRun.objects.filter(
        run_id=OuterRef("pk"),
        index=OuterRef("current_step"),
        status__in=StepRun.DONE,
        finished_at__range=(since, until),
    )
    waiting = StepRun.objects.filter(
        run_id=OuterRef("pk"), index=OuterRef("current_step") + 1, status=StepRun.Status.PENDING
    )
    rows = (
        Run.objects.filter(status=Run.Status.RUNNING)
        .filter(Exists(finished), Exists(waiting))
        .annotate(next_index=F("current_step") + 1)
        .values_list("pk", "next_index")[:UNSENT_BATCH]
    )
    unstarted = StepRun.objects.filter(run_id=OuterRef("pk"), index=0, status=StepRun.Status.PENDING)
    first = (
        # Sent (dispatch_count) and due (a deadline: not held for its turn nor parked for a jitter).
        Run.objects.filter(
            status=Run.Status.QUEUED,
            created_at__range=(since, until),
            dispatch_count__gt=0,
            deadline_at__isnull=False,
        )
        .filter(Exists(unstarted))
        .values_list("pk", flat=True)[:UNSENT_BATCH]
    )
    return [(pk, int(index)) for pk, index in rows] + [(pk, 0) for pk in first]


def runs_with_lost_claims(claim_ids: Collection[str]) -> list[uuid.UUID]:
    """Active runs with a running step whose claim (the Celery message id) is among `claim_ids`:
    jobs that were running on a worker that died. (The items of foreach steps carry claims too:
    lost_claims_recover hands those to items_mark_lost.)"""
    if not claim_ids:
        return []
    ids = list(claim_ids)
    found = set(
        StepRun.objects.filter(
            run__status__in=[Run.Status.QUEUED, Run.Status.RUNNING], status=StepRun.Status.RUNNING, claim_id__in=ids
        ).values_list("run_id", flat=True)
    )
    return sorted(found, key=str)


def _runs_with_lost_messages(steps: Collection[tuple[str, int]]) -> list[uuid.UUID]:
    """Active runs whose chain a dead worker's job held and nobody will send on: the step it had
    received the message for but never started (prefetched, or waiting out a countdown) is still
    pending, or the step it ran is done and the next one pending (it died between recording the
    step and publishing the next message). run_recover decides under the run's lock."""
    found = []
    for run_id, index in steps:
        try:
            pk = uuid.UUID(run_id)
        except ValueError:
            continue
        if StepRun.objects.filter(
            run_id=pk,
            index__in=[index, index + 1],
            status=StepRun.Status.PENDING,
            run__status__in=RECOVERABLE,
        ).exists():
            found.append(pk)
    return found


def held(queryset: Any) -> Any:
    """Runs waiting for their turn (overlap=queue): queued, never dispatched, no deadline."""
    return queryset.filter(status=Run.Status.QUEUED, deadline_at__isnull=True, dispatch_count=0)


def run_start_held(*, task_id: Any) -> Run | None:
    """Start the oldest run of the task held for its turn, once no other run of it is active. The
    caller holds the task's row lock (tasks.services.task_release_held), so a run the fire job
    holds back meanwhile is either seen here or sees that nothing is active any more."""
    runs = Run.objects.filter(task_id=task_id)
    waiting = held(runs)
    if runs.filter(status__in=Run.ACTIVE).exclude(pk__in=waiting.values("pk")).exists():
        return None
    run = waiting.select_related("task").order_by("scheduled_for", "created_at").first()
    if run is None:
        return None
    run.deadline_at = queued_deadline(timezone.now(), run.jitter_seconds)
    run.save(update_fields=["deadline_at"])
    if not jitter_parked(run.jitter_seconds):
        dispatch_on_commit(run, countdown=run.jitter_seconds)
    return run


def run_recover(
    *,
    run_id: uuid.UUID,
    now: datetime | None = None,
    lost_claims: Collection[str] | None = None,
    lost_steps: Collection[tuple[str, int]] = (),
    unsent_between: tuple[datetime, datetime] | None = None,
) -> bool:
    """Re-dispatch a run stuck past its deadline from its first unfinished step. A step left
    running by a lost message goes back to pending, so the new message can claim it. With
    `lost_claims` (the jobs of a dead worker), the run is recovered before its deadline, but only
    while one of its running steps is still claimed by one of them, or while its first unfinished
    step is pending and it or the step before it is one of `lost_steps` (run id, index): its
    message died unstarted, or the job before it died between recording its step and sending it;
    or, with `unsent_between`, while its first unfinished step is pending and the one before it
    finished in that window (its message may have died with a worker unlisted)."""
    now = now or timezone.now()
    with transaction.atomic():
        # SKIP LOCKED: two sweepers never handle the same run; the other one moves on.
        runs = skip_locked(Run.objects.select_related("task")).filter(pk=run_id, status__in=RECOVERABLE)
        if lost_claims is None:
            runs = runs.filter(deadline_at__lte=now)
        run = runs.first()
        if run is None:
            return False
        if lost_claims is not None and not (
            _holds_lost_claim(run, lost_claims)
            or _waits_for_lost_message(run, lost_steps)
            or (unsent_between is not None and _waits_since(run, unsent_between))
        ):
            return False
        # The conditional update is the claim where SKIP LOCKED is not available (SQLite).
        claimed = Run.objects.filter(pk=run.pk, status=run.status, deadline_at=run.deadline_at).update(
            deadline_at=now + grace(settings.ORDINAUT_QUEUED_GRACE_S)
        )
        if not claimed:
            return False
        steps = list(StepRun.objects.filter(run=run).order_by("index"))
        unfinished = [s for s in steps if s.status in (StepRun.Status.PENDING, StepRun.Status.RUNNING)]
        if not unfinished:
            _finish_recovered(run, steps)
            return True
        first = unfinished[0]
        StepRun.objects.filter(run=run, index__gte=first.index, status=StepRun.Status.RUNNING).update(
            status=StepRun.Status.PENDING, claim_id=""
        )
        Run.objects.filter(pk=run.pk).update(current_step=first.index)
        if lost_claims is not None:
            logger.warning("re-dispatching run %s from step %s: its worker died", run.pk, first.index)
        elif run.dispatch_count == 0 and run.status == Run.Status.QUEUED:
            logger.info("starting run %s: its jitter, held in the database, is over", run.pk)
        else:
            logger.warning(
                "re-dispatching run %s from step %s (%s past its deadline)", run.pk, first.index, now - run.deadline_at
            )
        dispatch_on_commit(run, from_index=first.index)
    return True


def _holds_lost_claim(run: Run, lost_claims: Collection[str]) -> bool:
    """Under the run's lock: a step of it is still running under one of the lost claims (not reset
    meanwhile by another recovery, nor finished by a worker that was not dead after all)."""
    return StepRun.objects.filter(run=run, status=StepRun.Status.RUNNING, claim_id__in=list(lost_claims)).exists()


def _first_unfinished(run: Run) -> StepRun | None:
    return (
        StepRun.objects.filter(run=run, status__in=[StepRun.Status.PENDING, StepRun.Status.RUNNING])
        .order_by("index")
        .first()
    )


def _waits_for_lost_message(run: Run, lost_steps: Collection[tuple[str, int]]) -> bool:
    """Under the run's lock: its first unfinished step is pending and either its own message or the
    job of the step before it (done, the next message never sent) was one of the dead worker's."""
    indexes = {index for run_id, index in lost_steps if run_id == str(run.pk)}
    if not indexes:
        return False
    first = _first_unfinished(run)
    return (
        first is not None
        and first.status == StepRun.Status.PENDING
        and (first.index in indexes or first.index - 1 in indexes)
    )


def _waits_since(run: Run, window: tuple[datetime, datetime]) -> bool:
    """Under the run's lock: its first unfinished step is pending and the one before it finished
    within `window`, or it is a queued run created (and sent) within `window` that never started."""
    first = _first_unfinished(run)
    if first is None or first.status != StepRun.Status.PENDING:
        return False
    if first.index == 0:
        return (
            run.status == Run.Status.QUEUED
            and run.dispatch_count > 0
            and run.deadline_at is not None
            and window[0] <= run.created_at <= window[1]
        )
    return StepRun.objects.filter(
        run=run, index=first.index - 1, status__in=StepRun.DONE, finished_at__range=window
    ).exists()


def _finish_recovered(run: Run, steps: list[StepRun]) -> None:
    """Every step is done but the run was not closed (the worker died in between): close it by
    the after-step rule, step by step."""
    if run.status == Run.Status.QUEUED:
        run_mark_running(run=run)
    for step in steps:
        after = run_after_step(
            run=run,
            index=step.index,
            step_id=step.step_id,
            failed=step.status == StepRun.Status.FAILED,
            output=step.output,
            error=step.error,
        )
        if after is After.RUN_ENDED:
            return
    if not steps:
        run_after_step(run=run, index=0, step_id="", failed=False)
