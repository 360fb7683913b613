"""The broker never gets a countdown above ORDINAUT_MAX_COUNTDOWN_S: a longer run jitter is held in
the database and started by the sweeper; the visibility timeout check counts every wait a message
may legitimately have."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from ordinaut_site.celery import app
from runs.models import Run
from runs.services import ScheduledRun, run_create, run_dispatch, runs_create_scheduled, runs_sweep
from tasks.services import task_release_held
from tests.support.pipelines import drive, echo_pipeline, make_task

pytestmark = pytest.mark.django_db

BASE_DIR = Path(__file__).resolve().parents[2]
MAX_COUNTDOWN_S = 60


@dataclass(frozen=True)
class Published:
    """One message as the broker would have received it."""

    name: str
    args: Any
    eta: datetime | None


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch, settings: Any) -> list[Published]:
    """Messages handed to the broker, recorded at Celery's last step before the wire (and not sent)."""
    settings.ORDINAUT_MAX_COUNTDOWN_S = MAX_COUNTDOWN_S
    sent: list[Published] = []

    def record(producer: Any, name: str, message: Any, **kwargs: Any) -> None:
        headers = message.headers
        eta = datetime.fromisoformat(headers["eta"]) if headers.get("eta") else None
        sent.append(Published(name, headers.get("argsrepr"), eta))

    monkeypatch.setattr(app.amqp, "send_task_message", record)
    return sent


def _countdown_s(message: Published, sent_at: datetime) -> float:
    return 0.0 if message.eta is None else (message.eta - sent_at).total_seconds()


def test_a_jitter_within_the_max_countdown_is_the_first_steps_countdown(
    agent: Any, published: list[Published], django_capture_on_commit_callbacks: Any
) -> None:
    sent_at = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual", jitter_seconds=20)

    assert len(published) == 1
    assert 19 <= _countdown_s(published[0], sent_at) <= 21
    assert Run.objects.get(pk=run.pk).dispatch_count == 1


def test_a_jitter_longer_than_the_max_countdown_is_held_and_started_by_the_sweeper(
    agent: Any, published: list[Published], django_capture_on_commit_callbacks: Any
) -> None:
    created_at = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual", jitter_seconds=3000)

    assert published == [], "no countdown of 3000 s is handed to the broker"
    run.refresh_from_db()
    assert (run.status, run.dispatch_count, run.jitter_seconds) == ("queued", 0, 3000)
    assert run.deadline_at is not None
    assert abs((run.deadline_at - created_at).total_seconds() - 3000) < 5

    with django_capture_on_commit_callbacks(execute=True):
        assert runs_sweep(now=created_at + timedelta(seconds=2900))["runs_recovered"] == 0, "still in its jitter"
    assert published == []

    sweep_at = created_at + timedelta(seconds=3010)
    with django_capture_on_commit_callbacks(execute=True):
        assert runs_sweep(now=sweep_at)["runs_recovered"] == 1
    assert len(published) == 1
    assert published[0].eta is None or _countdown_s(published[0], timezone.now()) <= MAX_COUNTDOWN_S
    assert Run.objects.get(pk=run.pk).dispatch_count == 1

    drive(run.pk)
    assert Run.objects.get(pk=run.pk).status == "succeeded"


def test_scheduled_runs_with_a_long_jitter_are_held_and_short_ones_sent(
    agent: Any, published: list[Published], django_capture_on_commit_callbacks: Any
) -> None:
    task = make_task(agent.agent, echo_pipeline(1))
    at = timezone.now()
    sent_at = timezone.now()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        short, long = runs_create_scheduled(
            [
                ScheduledRun(task=task, scheduled_for=at, trigger_key="short", jitter_seconds=30),
                ScheduledRun(task=task, scheduled_for=at, trigger_key="long", jitter_seconds=1800),
            ]
        )

    assert len(published) == 1
    assert 29 <= _countdown_s(published[0], sent_at) <= 31
    assert str(short.pk) in published[0].args
    long.refresh_from_db()
    assert (long.status, long.dispatch_count) == ("queued", 0)
    assert long.deadline_at is not None
    assert abs((long.deadline_at - sent_at).total_seconds() - 1800) < 5


def test_a_queued_occurrence_released_with_a_long_jitter_is_held(
    agent: Any, published: list[Published], django_capture_on_commit_callbacks: Any
) -> None:
    task = make_task(agent.agent, echo_pipeline(1), overlap="queue")
    with transaction.atomic():
        (held,) = runs_create_scheduled(
            [ScheduledRun(task=task, scheduled_for=timezone.now(), trigger_key="k", jitter_seconds=1800, hold=True)]
        )

    with django_capture_on_commit_callbacks(execute=True):
        assert task_release_held(task_id=task.pk) is not None

    assert published == []
    held.refresh_from_db()
    assert held.deadline_at is not None
    assert held.deadline_at > timezone.now() + timedelta(seconds=1700)


def test_run_dispatch_caps_any_countdown_at_the_max(agent: Any, published: list[Published]) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    sent_at = timezone.now()

    run_dispatch(run_id=run.pk, from_index=0, step_count=1, countdown=3600)

    assert len(published) == 1
    assert 0 < _countdown_s(published[0], sent_at) <= MAX_COUNTDOWN_S + 1


def _settings_check(**env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ORDINAUT_", "CELERY_"))}
    full_env.update(SECRET_KEY="x" * 50, **env)
    return subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=BASE_DIR, env=full_env, text=True, capture_output=True, timeout=120
    )


def test_the_visibility_timeout_must_cover_the_hard_time_limit_too() -> None:
    # Step timeout 3600 + countdown 900 = 4500; the hard time limit adds 30.
    limits = {"ORDINAUT_MAX_STEP_TIMEOUT_S": "3600", "ORDINAUT_MAX_COUNTDOWN_S": "900"}

    too_short = _settings_check(CELERY_VISIBILITY_TIMEOUT_S="4510", **limits)
    assert too_short.returncode != 0
    assert "CELERY_VISIBILITY_TIMEOUT_S must be larger" in too_short.stderr

    enough = _settings_check(CELERY_VISIBILITY_TIMEOUT_S="4531", **limits)
    assert enough.returncode == 0, enough.stderr
