"""Fire jobs have time limits (ORDINAUT_FIRE_SOFT_TIME_LIMIT_S / ORDINAUT_FIRE_TIME_LIMIT_S): a
batch stuck on one task is split, and the other tasks of the batch fire meanwhile; what was stuck
fires once it can, once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from ordinaut_site.celery import app
from runs.models import Run
from tasks.beat import FIRE_BATCH_JOB_NAME, FIRE_JOB_NAME, RECORD_MISSED_JOB_NAME
from tasks.jobs import fire_batch_job
from tasks.models import Task
from tests.support.processes import Worker, wait_for


def test_the_fire_jobs_carry_the_time_limits_of_the_settings() -> None:
    for name in (FIRE_BATCH_JOB_NAME, FIRE_JOB_NAME, RECORD_MISSED_JOB_NAME):
        job = app.tasks[name]
        assert (job.soft_time_limit, job.time_limit) == (
            settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S,
            settings.ORDINAUT_FIRE_TIME_LIMIT_S,
        ), name
    assert settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S < settings.ORDINAUT_FIRE_TIME_LIMIT_S


def runs_of(task: Task) -> list[Run]:
    return list(Run.objects.filter(task=task, trigger="schedule"))


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_a_batch_stuck_on_one_task_is_split_and_the_others_fire_meanwhile(
    make_task: Any, task_row_lock: Any, worker_logs: Path, workers: list[Worker]
) -> None:
    stuck, free = make_task("cron", "* * * * *"), make_task("cron", "* * * * *")
    at = timezone.now().replace(microsecond=0)
    # A worker of its own, on a queue of its own, with a short soft limit (long enough for the free
    # task's own fire on a busy machine).
    queue = f"{app.conf.task_default_queue}-limits"
    env = {"ORDINAUT_FIRE_SOFT_TIME_LIMIT_S": "4", "ORDINAUT_FIRE_TIME_LIMIT_S": "12"}
    limited = Worker(worker_logs, queue=queue, env=env).start()
    workers.append(limited)
    release = task_row_lock(stuck)

    app.send_task(
        FIRE_BATCH_JOB_NAME,
        kwargs={"occurrences": [[str(stuck.pk), at.isoformat()], [str(free.pk), at.isoformat()]]},
        queue=f"{queue}.schedule",
    )

    wait_for(lambda: runs_of(free), timeout=60, message="the free task to fire while the other is stuck")
    assert runs_of(stuck) == [], "still locked"
    assert "firing them one per job" in limited.log_text()
    release.set()
    wait_for(lambda: runs_of(stuck), timeout=60, message="the stuck task to fire once its lock is released")
    limited.wait_idle()
    assert [r.scheduled_for for r in runs_of(stuck)] == [at]
    assert [r.scheduled_for for r in runs_of(free)] == [at]


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_a_batch_killed_by_its_hard_limit_is_sent_again_one_occurrence_per_job(make_task: Any, worker: Any) -> None:
    tasks = [make_task("cron", "* * * * *") for _ in range(3)]
    at = (timezone.now() - timedelta(seconds=1)).replace(microsecond=0)
    occurrences = [[str(t.pk), at.isoformat()] for t in tasks]

    # What the worker's main process calls when the pool process running the batch was killed.
    fire_batch_job.on_failure(TimeLimitExceeded(60), "killed-job", (), {"occurrences": occurrences}, None)

    wait_for(lambda: all(runs_of(t) for t in tasks), timeout=60, message="each occurrence to fire in a job of its own")
    worker.wait_idle()
    assert sorted(len(runs_of(t)) for t in tasks) == [1, 1, 1]
