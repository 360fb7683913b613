"""Read-side queries for runs, step runs and approvals."""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Aggregate, Count, DurationField, ExpressionWrapper, F, Q, QuerySet

from ordinaut_site.errors import NotFound
from ordinaut_site.models import Agent

from .models import Approval, Run, StepRun

# What a step job reads of its run and task. Any other field still loads, lazily, if touched.
STEP_RUN_FIELDS = (
    "id",
    "task_id",
    "trigger",
    "trigger_key",
    "scheduled_for",
    "status",
    "started_at",
    "context",
    "pipeline",
    "replay_of_id",
    "current_step",
    "deadline_at",
)
STEP_TASK_FIELDS = (
    "id",
    "title",
    "timezone",
    "timeout_seconds",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "overlap",
)
_STEP_JSON_FIELDS = ("context", "pipeline")
# Every step job starts with this query; on PostgreSQL it skips the ORM's query building and
# model machinery, which cost five times the query itself (measured: 0.57 ms of CPU vs 0.09).
# The columns, of runs_run r and tasks_task t, in the order of the two field lists.
STEP_ROW_SELECT = ", ".join([*(f"r.{name}" for name in STEP_RUN_FIELDS), *(f"t.{name}" for name in STEP_TASK_FIELDS)])
_STEP_RUN_SQL = f"""
SELECT {STEP_ROW_SELECT}
  FROM runs_run r JOIN tasks_task t ON t.id = r.task_id
 WHERE r.id = %s
"""  # noqa: S608 - constant column names, values are parameters


def run_get_for_step(*, run_id: str) -> Run | None:
    """The run a step job works on, with its task (None if it was deleted meanwhile)."""
    if connection.vendor != "postgresql":
        fields = (*STEP_RUN_FIELDS, *(f"task__{name}" for name in STEP_TASK_FIELDS))
        found = list(Run.objects.select_related("task").only(*fields).filter(pk=run_id).order_by()[:1])
        return found[0] if found else None
    with connection.cursor() as cursor:
        cursor.execute(_STEP_RUN_SQL, [run_id])
        row = cursor.fetchone()
    return None if row is None else run_from_step_row(row)


# How many columns of a row run_from_step_row reads (the run's, then its task's).
STEP_ROW_COLUMNS = len(STEP_RUN_FIELDS) + len(STEP_TASK_FIELDS)


def run_from_step_row(row: tuple[Any, ...]) -> Run:
    """A run and its task from a row of STEP_RUN_FIELDS then STEP_TASK_FIELDS (as _STEP_RUN_SQL
    selects them; the step claim of runs/services/steps.py selects the same)."""
    values = dict(zip(STEP_RUN_FIELDS, row[: len(STEP_RUN_FIELDS)], strict=True))
    for name in _STEP_JSON_FIELDS:  # jsonb arrives as text, as for the ORM's JSONField
        if isinstance(values[name], str):
            values[name] = json.loads(values[name])
    run = model_from_columns(Run, values)
    task_model: Any = Run._meta.get_field("task").related_model  # tasks.Task, without importing tasks/
    task_values = row[len(STEP_RUN_FIELDS) : STEP_ROW_COLUMNS]
    run.task = model_from_columns(task_model, dict(zip(STEP_TASK_FIELDS, task_values, strict=True)))
    return run


def model_from_columns(model: Any, values: dict[str, Any]) -> Any:
    """A model instance from some of its columns (the others deferred), as the ORM builds one:
    Model.from_db wants the values in the model's field order."""
    names = [f.attname for f in model._meta.concrete_fields if f.attname in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def run_visible_to(agent: Agent) -> QuerySet[Run]:
    """Runs inherit their task owner's visibility; admins see everything."""
    runs = Run.objects.select_related("task")
    return runs if agent.is_admin else runs.filter(task__owner=agent)


def run_get(*, agent: Agent, run_id: uuid.UUID | str) -> Run:
    run = run_visible_to(agent).filter(pk=run_id).first()
    if run is None:
        raise NotFound("Run not found.")
    return run


def run_list(
    *,
    agent: Agent,
    task_id: uuid.UUID | None = None,
    status: list[str] | None = None,
    trigger: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet[Run]:
    """Runs an agent may see, newest first, filtered by task, status, trigger and creation time."""
    runs = run_visible_to(agent)
    if task_id is not None:
        runs = runs.filter(task_id=task_id)
    if status:
        runs = runs.filter(status__in=status)
    if trigger:
        runs = runs.filter(trigger__in=trigger)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    if until is not None:
        runs = runs.filter(created_at__lt=until)
    return runs.order_by("-created_at", "-pk")


def run_steps(*, run: Run) -> QuerySet[StepRun]:
    """A run's steps in order, with a foreach step's items (one more query for them all)."""
    return StepRun.objects.filter(run=run).order_by("index").prefetch_related("items")


def step_outputs(*, run: Run, before_index: int) -> dict[str, Any]:
    """Outputs of the finished steps before `before_index`, by step id and by save_as (what
    templates see as `steps`). Read from the database: outputs never travel through the broker."""
    aliases = {
        index: step["save_as"]
        for index, step in enumerate(run.pipeline[:before_index])
        if isinstance(step, dict) and step.get("save_as")
    }
    outputs: dict[str, Any] = {}
    rows = StepRun.objects.filter(run=run, index__lt=before_index, status__in=StepRun.DONE).values_list(
        "index", "step_id", "output"
    )
    for index, step_id, output in rows:
        outputs[step_id] = output
        if index in aliases:
            outputs[aliases[index]] = output
    return outputs


def approval_visible_to(agent: Agent) -> QuerySet[Approval]:
    approvals = Approval.objects.select_related("run", "run__task")
    return approvals if agent.is_admin else approvals.filter(run__task__owner=agent)


def approval_list(*, agent: Agent, status: list[str] | None = None, run_id: uuid.UUID | None = None) -> Any:
    approvals = approval_visible_to(agent)
    if status:
        approvals = approvals.filter(status__in=status)
    if run_id is not None:
        approvals = approvals.filter(run_id=run_id)
    return approvals.order_by("-created_at", "-pk")


# --- Statistics -------------------------------------------------------------------------------

# Runs that ended after they were queued: the denominator of the success rate (skipped runs
# never started and are left out).
STATS_FINISHED = (Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.CANCELED)
STATS_PERCENTILES = {"p50": 0.5, "p95": 0.95}
# What a run took, and how late its first step started; NULL (left out) when a time is missing.
_DURATION = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
_LATENESS = ExpressionWrapper(F("started_at") - F("scheduled_for"), output_field=DurationField())
_MEASURES = {
    "duration_seconds": (_DURATION, Q(started_at__isnull=False, finished_at__isnull=False)),
    "lateness_seconds": (_LATENESS, Q(started_at__isnull=False, scheduled_for__isnull=False)),
}


class _PercentileCont(Aggregate):
    """PostgreSQL's continuous percentile: `percentile_cont(f) WITHIN GROUP (ORDER BY x)`, NULLs left out."""

    function = "percentile_cont"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: Any, *, fraction: float) -> None:
        super().__init__(expression, output_field=DurationField(), fraction=float(fraction))


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 6)


def _percentile_by_offset(runs: QuerySet[Run], measure: str, count: int, fraction: float) -> timedelta | None:
    """percentile_cont without the aggregate (SQLite has none): the one or two rows around the
    position, read in the database with ORDER BY and OFFSET, interpolated as percentile_cont does."""
    if count == 0:
        return None
    expression, present = _MEASURES[measure]
    position = fraction * (count - 1)
    low = math.floor(position)
    values = list(
        runs.filter(present).annotate(value=expression).order_by("value").values_list("value", flat=True)[low : low + 2]
    )
    if not values:
        return None  # runs went away between the two queries
    if len(values) == 1 or position == low:
        return values[0]
    return values[0] + (values[1] - values[0]) * (position - low)


def run_stats_of(runs: QuerySet[Run], *, in_database_percentiles: bool | None = None) -> dict[str, Any]:
    """Counts by status and trigger, success rate, p50/p95 of duration and first-step lateness, and
    the last failure of `runs`, in a fixed number of queries whatever their number: one aggregate
    and the last failure on PostgreSQL (percentile_cont), plus one ORDER BY/OFFSET query per
    percentile elsewhere. `in_database_percentiles` forces a path (tests compare the two)."""
    if in_database_percentiles is None:
        in_database_percentiles = connection.vendor == "postgresql"
    runs = runs.order_by()
    aggregates: dict[str, Any] = {"total": Count("pk")}
    aggregates |= {f"status_{value}": Count("pk", filter=Q(status=value)) for value in Run.Status.values}
    aggregates |= {f"trigger_{value}": Count("pk", filter=Q(trigger=value)) for value in Run.Trigger.values}
    for measure, (expression, present) in _MEASURES.items():
        aggregates[f"{measure}_n"] = Count("pk", filter=present)
        if in_database_percentiles:
            for name, fraction in STATS_PERCENTILES.items():
                aggregates[f"{measure}_{name}"] = _PercentileCont(expression, fraction=fraction)
    row = runs.aggregate(**aggregates)
    percentiles: dict[str, dict[str, float | None]] = {}
    for measure in _MEASURES:
        percentiles[measure] = {
            name: _seconds(
                row[f"{measure}_{name}"]
                if in_database_percentiles
                else _percentile_by_offset(runs, measure, row[f"{measure}_n"], fraction)
            )
            for name, fraction in STATS_PERCENTILES.items()
        }
    by_status = {value: row[f"status_{value}"] for value in Run.Status.values}
    finished = sum(by_status[value] for value in STATS_FINISHED)
    failure = (
        runs.filter(status=Run.Status.FAILED)
        .order_by(F("finished_at").desc(nulls_last=True), "-created_at", "-pk")
        .values_list("pk", "finished_at", "error")
        .first()
    )
    return {
        "total": row["total"],
        "by_status": by_status,
        "by_trigger": {value: row[f"trigger_{value}"] for value in Run.Trigger.values},
        "success_rate": round(by_status[Run.Status.SUCCEEDED] / finished, 6) if finished else None,
        **percentiles,
        "last_failure": None
        if failure is None
        else {
            "run": failure[0],
            "finished_at": failure[1],
            "code": failure[2].get("code") if isinstance(failure[2], dict) else None,
        },
    }


def run_stats(
    *,
    agent: Agent | None,
    task_id: uuid.UUID | str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Statistics of the runs an agent may see (every run when `agent` is None: the operator's
    admin, or a caller that checked the task is visible), by task and creation time as GET /runs
    filters them. See run_stats_of for what is counted and how."""
    runs = Run.objects.all() if agent is None else run_visible_to(agent)
    if task_id is not None:
        runs = runs.filter(task_id=task_id)
    if since is not None:
        runs = runs.filter(created_at__gte=since)
    if until is not None:
        runs = runs.filter(created_at__lt=until)
    return run_stats_of(runs)
