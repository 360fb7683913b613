"""Many admin rows at once (bulk_create): tasks, runs with a step and foreach items, approvals,
events and audit entries, each row of a different parent where it has one, so a list that loads
parents row by row shows it in its query count (tests/admin/test_admin_queries.py; at 100,000
runs in tests/perf/bench_admin_lists.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from ordinaut_site.models import Agent, AuditLog
from runs.models import Approval, Run, StepItem, StepRun
from tasks.models import Event, Task

PAYLOAD = {"params": {}, "pipeline": [{"id": "each", "uses": "orchestrator.echo", "foreach": [1, 2]}]}
BATCH = 5000


def build_rows(owner: Agent, count: int, *, tasks: int | None = None) -> dict[str, int]:
    """`count` runs (over `tasks` tasks, default one each), each with one foreach step of one item,
    an approval, an event it emitted and an audit entry. Returns how many of each were made."""
    now = timezone.now()
    task_count = min(count, tasks or count)
    made_tasks = Task.objects.bulk_create(
        [
            Task(owner=owner, title=f"Task {n:06d}", schedule_kind="manual", payload=PAYLOAD, last_run_at=now)
            for n in range(task_count)
        ],
        batch_size=BATCH,
    )
    statuses = [Run.Status.SUCCEEDED, Run.Status.FAILED, Run.Status.WAITING_APPROVAL, Run.Status.SKIPPED]
    runs = Run.objects.bulk_create(
        [
            Run(
                task=made_tasks[n % task_count],
                trigger=Run.Trigger.MANUAL,
                trigger_key=f"manual:bulk-{n}",
                status=statuses[n % len(statuses)],
                skip_reason="overlap" if n % len(statuses) == 3 else "",
                created_at=now - timedelta(seconds=n),
                started_at=now - timedelta(seconds=n),
                finished_at=now - timedelta(seconds=n) + timedelta(milliseconds=250),
                pipeline=PAYLOAD["pipeline"],
                context={"params": {}, "event": None, "now": now.isoformat()},
            )
            for n in range(count)
        ],
        batch_size=BATCH,
    )
    steps = StepRun.objects.bulk_create(
        [
            StepRun(run=run, index=0, step_id="each", uses="orchestrator.echo", status="succeeded", attempts=1)
            for run in runs
        ],
        batch_size=BATCH,
    )
    StepItem.objects.bulk_create(
        [
            StepItem(step=step, index=0, status="succeeded", attempts=1, input={"v": 1}, output={"v": 1}, duration_ms=5)
            for step in steps
        ],
        batch_size=BATCH,
    )
    Approval.objects.bulk_create(
        [
            Approval(
                run=run,
                step_index=1,
                step_id="ask",
                message=f"Send {n % 5 + 1} follow-ups?",
                data=[{"n": i} for i in range(n % 5 + 1)],
                status=Approval.Status.PENDING if run.status == Run.Status.WAITING_APPROVAL else "approved",
                approved_items=None if run.status == Run.Status.WAITING_APPROVAL else [{"n": 0}],
                created_at=run.created_at,
                expires_at=run.created_at + timedelta(days=7),
            )
            for n, run in enumerate(runs)
        ],
        batch_size=BATCH,
    )
    Event.objects.bulk_create(
        [
            Event(topic=f"bulk.topic.{n % 7}", payload={"n": n}, publisher=owner, hops=1, emitted_by_run=run)
            for n, run in enumerate(runs)
        ],
        batch_size=BATCH,
    )
    AuditLog.objects.bulk_create(
        [
            AuditLog(
                actor_kind="system", actor_name="bulk", action="run.cancel", subject_type="run", subject_id=str(run.pk)
            )
            for run in runs
        ],
        batch_size=BATCH,
    )
    return {"tasks": task_count, "runs": count, "items": count, "approvals": count, "events": count, "audit": count}


def agent_for_rows() -> Any:
    from ordinaut_site.audit import Actor
    from ordinaut_site.services import agent_create

    return agent_create(
        name=f"bulk-{timezone.now().timestamp():.0f}", scopes=["tasks:read"], actor=Actor.system("bulk")
    )
