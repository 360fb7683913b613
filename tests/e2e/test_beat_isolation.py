"""One bad beat row on a real beat: the task whose schedule raises when evaluated is parked (and
reported as such by the API and /health) while 50 other tasks keep firing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.models import Count
from django.test import Client
from django_celery_beat.models import PeriodicTask

from runs.models import Run
from tasks.health import BEAT_SILENT_S
from tasks.models import Task
from tasks.scheduler import beat_heartbeat_key, leader_key
from tests.support.processes import Beat, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]
GOOD_TASKS = 50
EVERY_S = 2
RUNS_EACH = 2


@pytest.fixture
def beat(worker_logs: Path, redis_client: Any, worker: Any) -> Iterator[Any]:
    started: list[Beat] = []
    redis_client.delete(leader_key(), beat_heartbeat_key())

    def start() -> Beat:
        process = Beat(worker_logs, "isolation", env={"ORDINAUT_BEAT_LOCK_TTL_S": "3"}).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    redis_client.delete(leader_key(), beat_heartbeat_key())
    worker.wait_idle()  # the jobs beat sent finish before the teardown empties the database


def test_a_row_that_raises_is_parked_and_fifty_others_keep_firing(make_task: Any, beat: Any, agent: Any) -> None:
    no_steps: dict[str, Any] = {"params": {}, "pipeline": []}  # the runs are what counts here, not their steps
    good = [
        make_task("interval", str(EVERY_S), overlap="allow", title=f"good {i}", payload=no_steps)
        for i in range(GOOD_TASKS)
    ]
    bad = make_task("cron", "* * * * *", "Europe/Chisinau", overlap="allow", title="bad", payload=no_steps)
    crontab_id = PeriodicTask.objects.get(pk=bad.periodic_task_id).crontab_id
    with connection.cursor() as cursor:  # past every validation: the model field would refuse it
        cursor.execute(
            "UPDATE django_celery_beat_crontabschedule SET timezone = %s WHERE id = %s", ["Mars/Olympus", crontab_id]
        )

    process = beat()

    def fired() -> bool:
        runs = Run.objects.filter(task__in=good, trigger="schedule").values("task").annotate(n=Count("id"))
        counts = dict(runs.values_list("task", "n"))
        return len(counts) == GOOD_TASKS and min(counts.values()) >= RUNS_EACH

    wait_for(fired, timeout=60, message=f"each of the {GOOD_TASKS} good tasks to fire {RUNS_EACH} times")
    assert "beat tick failed" not in process.log_text(), "the bad row never made beat start over"
    assert "parked" in process.log_text()

    parked = Task.objects.get(pk=bad.pk)
    assert parked.schedule_parked_at is not None
    assert "Mars/Olympus" in parked.schedule_error
    assert not Run.objects.filter(task=bad).exists()
    body = agent.client.get(f"/tasks/{bad.pk}").json()
    assert body["schedule_error"] == parked.schedule_error
    assert body["schedule_parked_at"] is not None
    assert agent.client.get(f"/tasks/{good[0].pk}").json()["schedule_error"] is None

    check = wait_for(
        lambda: (c := Client().get("/health").json()["checks"]["beat"])["heartbeat_age_s"] is not None and c,
        timeout=15,
        message="beat's heartbeat",
    )
    assert check["heartbeat_age_s"] <= BEAT_SILENT_S
    assert (check["ok"], check["parked_tasks"], check["parked"]) == (False, 1, [str(bad.pk)])
