"""Replay: a new run of a failed or canceled run's task, from the start or from the failed step."""

from __future__ import annotations

from typing import Any

from ordinaut_site.audit import Actor
from ordinaut_site.errors import Conflict, ValidationFailed
from pipelines.spec import step_id_of

from ..models import Run, StepRun
from .creation import NewRun, RunAlreadyExists, run_context, run_insert

REPLAY_FROM = ("failed_step", "start")
MAX_REPLAY_KEY_TRIES = 5


def run_replay(*, run: Run, from_: str, actor: Actor) -> Run:
    """A new run of a failed or canceled run's task, with the same params, event and logical
    time, linked by replay_of. From the failed step: the steps before it keep their stored
    outputs (copied, not re-run), provided the task's pipeline still has them unchanged."""
    if from_ not in REPLAY_FROM:
        raise ValidationFailed.on("from", f"must be one of {', '.join(REPLAY_FROM)}")
    if run.status not in (Run.Status.FAILED, Run.Status.CANCELED):
        raise Conflict(f"the run is {run.status}; only failed or canceled runs can be replayed")
    task = run.task
    if task.deleted_at is not None or task.status == task.Status.CANCELED:
        raise Conflict("the run's task is deleted or canceled; it cannot run again")
    pipeline = task.pipeline
    start_index, reused = 0, list[StepRun]()
    if from_ == "failed_step":
        start_index, reused = _replay_reuse(run, pipeline)
    context = run_context(
        params=run.context.get("params") or {}, event=run.context.get("event"), now=run.context.get("now")
    )
    for _ in range(MAX_REPLAY_KEY_TRIES):
        number = Run.objects.filter(replay_of=run).count() + 1
        try:
            return run_insert(
                NewRun(
                    task=task,
                    trigger=Run.Trigger.REPLAY,
                    trigger_key=f"replay:{run.pk}:{number}",
                    context=context,
                    pipeline=pipeline,
                    replay_of=run,
                    start_index=start_index,
                    reused=reused,
                ),
                actor=actor,
            )
        except RunAlreadyExists:  # a concurrent replay took this number
            continue
    raise Conflict("could not allocate a replay number; try again")


def _replay_reuse(run: Run, pipeline: list[dict[str, Any]]) -> tuple[int, list[StepRun]]:
    old_steps = list(StepRun.objects.filter(run=run).order_by("index"))
    failed_id = (run.error or {}).get("step_id")
    start = next((s.index for s in old_steps if failed_id and s.step_id == failed_id), None)
    if start is None:
        start = next((s.index for s in old_steps if s.status not in StepRun.DONE), len(old_steps))
    for old in old_steps[:start]:
        current = pipeline[old.index] if old.index < len(pipeline) else None
        if current is None or step_id_of(current, old.index) != old.step_id or current.get("uses") != old.uses:
            raise Conflict(
                f"the task's pipeline changed before step {old.step_id!r}; replay from start instead",
                fields={"from": ["the steps before the failed one changed"]},
            )
    return start, old_steps[:start]
