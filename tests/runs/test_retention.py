"""Run retention: finished runs past ORDINAUT_RUN_RETENTION_DAYS go with their steps and approvals;
active runs, recent runs and each task's newest run stay; the audit log is untouched."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from ordinaut_site.models import AuditLog
from runs.jobs import purge_runs_job
from runs.models import Approval, Run, StepRun
from runs.services import retention_cutoff, run_create, runs_purge
from tests.support.pipelines import approval_payload, drive, echo_pipeline, make_task, run_in_process

pytestmark = pytest.mark.django_db


def _age(run: Run, days: float) -> Run:
    at = timezone.now() - timedelta(days=days)
    Run.objects.filter(pk=run.pk).update(created_at=at, finished_at=at if run.finished_at else None)
    run.refresh_from_db()
    return run


def test_old_finished_runs_go_with_their_steps_and_the_rest_stays(agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(2))
    old = [_age(run_in_process(agent.agent, echo_pipeline(2)), 100) for _ in range(2)]
    kept_task_runs = []
    for days in (100, 99, 1):  # on one task: the newest (1 day) stays, the two older go
        run = run_create(task=task, trigger="manual")
        drive(run.pk)
        kept_task_runs.append(_age(Run.objects.get(pk=run.pk), days))
    waiting = _age(run_in_process(agent.agent, approval_payload()), 100)
    audit_rows = AuditLog.objects.count()

    deleted = runs_purge(before=timezone.now() - timedelta(days=30), batch=2)

    remaining = set(Run.objects.values_list("pk", flat=True))
    assert deleted == 2
    assert waiting.pk in remaining, "an active run (waiting for approval) is never purged"
    assert Approval.objects.filter(run=waiting).exists()
    assert kept_task_runs[2].pk in remaining
    assert kept_task_runs[0].pk not in remaining
    assert kept_task_runs[1].pk not in remaining
    assert all(run.pk in remaining for run in old), "each of those is its task's newest run"
    assert not StepRun.objects.filter(run_id__in=[kept_task_runs[0].pk, kept_task_runs[1].pk]).exists()
    assert AuditLog.objects.count() == audit_rows


def test_retention_off_keeps_everything(agent: Any, settings: Any) -> None:
    settings.ORDINAUT_RUN_RETENTION_DAYS = 0
    task = make_task(agent.agent, echo_pipeline(1))
    for _ in range(2):
        _age(run_create(task=task, trigger="manual"), 1000)

    assert retention_cutoff() is None
    assert purge_runs_job() == 0
    assert Run.objects.count() == 2


def test_the_command_reports_progress_and_the_count(agent: Any) -> None:
    task = make_task(agent.agent, echo_pipeline(1))
    for days in (400, 300, 1):
        run = run_create(task=task, trigger="manual")
        drive(run.pk)
        _age(Run.objects.get(pk=run.pk), days)
    out = StringIO()

    call_command("purge_runs", "--older-than-days", "30", stdout=out)

    assert "Deleted 2 run(s)." in out.getvalue()
    assert "deleted so far" in out.getvalue()
    assert Run.objects.filter(task=task).count() == 1


def test_beat_purges_daily(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["ordinaut.purge_runs"]
    assert (entry["task"], entry["schedule"]) == ("runs.purge", 86400.0)


def test_a_few_thousand_old_runs_go_in_bounded_batches(agent: Any) -> None:
    """3,000 finished runs (with 2 steps each) past the cutoff, over 3 tasks, and 30 recent ones:
    deleted in transactions of at most 500 runs, each task's newest kept, the recent ones kept."""
    tasks = [make_task(agent.agent, echo_pipeline(2), title=f"bulk {n}") for n in range(3)]
    old_at = timezone.now() - timedelta(days=200)
    runs = [
        Run(
            task=tasks[n % 3],
            trigger="manual",
            trigger_key=f"bulk:{n}",
            status="succeeded",
            created_at=old_at + timedelta(seconds=n),
            finished_at=old_at + timedelta(seconds=n),
        )
        for n in range(3000)
    ]
    recent = [
        Run(task=tasks[n % 3], trigger="manual", trigger_key=f"recent:{n}", status="failed", finished_at=timezone.now())
        for n in range(30)
    ]
    Run.objects.bulk_create(runs + recent, batch_size=1000)
    StepRun.objects.bulk_create(
        [StepRun(run=run, index=i, step_id=f"s{i}", uses="orchestrator.echo") for run in runs for i in range(2)],
        batch_size=2000,
    )
    progress: list[int] = []

    deleted = runs_purge(before=timezone.now() - timedelta(days=90), batch=500, progress=progress.append)

    assert deleted == 3000, "the newest of each task is a recent run: every old one goes"
    assert progress == [500 * n for n in range(1, 7)], "six transactions of 500"
    assert Run.objects.filter(trigger_key__startswith="bulk:").count() == 0
    assert Run.objects.filter(trigger_key__startswith="recent:").count() == 30
    assert StepRun.objects.filter(run__trigger_key__startswith="bulk:").count() == 0
