"""The scrape-time sources of the web's /metrics, each against real rows and real Redis keys, and
the pieces the processes count with: capped tool labels, counted tool calls, the worker's
multiprocess directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import current_app
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from prometheus_client.core import Metric

from ordinaut_site import metrics, multiproc
from ordinaut_site.celery import app
from ordinaut_site.queues import queue_config
from pipelines.tools import ToolCall, tool_resolve
from runs.metrics import approvals_state
from runs.models import Approval
from runs.services import run_create
from tasks.metrics import BACKLOG_GRACE_S, beat_state, events_state
from tasks.models import Task
from tasks.scheduler import beat_heartbeat_key, leader_key
from tests.support.events import clean_stream, publish

pytestmark = pytest.mark.django_db

CALL = ToolCall(run_id="r", step_id="s", timeout_s=5)


def values(families: Iterator[Metric]) -> dict[str, float]:
    """Sample name (with its labels, if any) -> value."""
    found = {}
    for family in families:
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


@pytest.fixture
def own_queues(redis_client: redis.Redis) -> Iterator[str]:
    """Queues no worker of the session reads, for this test's fake messages (and the namespace of
    the beat and liveness keys), set as the session's are (tests/conftest.py)."""
    name = f"ordinaut-sources-{uuid.uuid4().hex[:8]}"
    session = {key: getattr(app.conf, key) for key in queue_config(name)}
    for key, value in queue_config(name).items():
        setattr(app.conf, key, value)
    yield name
    for key, value in session.items():
        setattr(app.conf, key, value)
    keys = list(redis_client.scan_iter(match=f"{name}*"))
    if keys:
        redis_client.delete(*keys)


def test_approvals_pending_counts_only_pending_ones_and_the_oldest_wait(make_task: Any) -> None:
    assert values(approvals_state()) == {
        "ordinaut_approvals_pending": 0,
        "ordinaut_approvals_oldest_pending_age_seconds": 0,
    }
    run = run_create(task=make_task("manual", ""), trigger="manual")
    expires = timezone.now() + timedelta(days=1)
    for index, (status, age_s) in enumerate([("pending", 120), ("pending", 10), ("approved", 900)]):
        Approval.objects.create(
            run=run,
            step_index=index,
            step_id=f"s{index}",
            message="ok?",
            status=status,
            expires_at=expires,
            created_at=timezone.now() - timedelta(seconds=age_s),
        )

    found = values(approvals_state())

    assert found["ordinaut_approvals_pending"] == 2
    assert 120 <= found["ordinaut_approvals_oldest_pending_age_seconds"] < 180


def test_beat_backlog_counts_active_tasks_overdue_and_not_parked(
    make_task: Any, own_queues: str, redis_client: redis.Redis
) -> None:
    overdue = timezone.now() - timedelta(seconds=BACKLOG_GRACE_S + 60)
    late = make_task("cron", "* * * * *")
    paused = make_task("cron", "* * * * *")
    parked = make_task("cron", "* * * * *")
    deleted = make_task("cron", "* * * * *")
    just_due = make_task("cron", "* * * * *")
    Task.objects.filter(pk__in=[late.pk, paused.pk, parked.pk, deleted.pk]).update(next_run_at=overdue)
    Task.objects.filter(pk=paused.pk).update(status=Task.Status.PAUSED)
    Task.objects.filter(pk=parked.pk).update(schedule_parked_at=timezone.now())
    Task.objects.filter(pk=deleted.pk).update(deleted_at=timezone.now())
    Task.objects.filter(pk=just_due.pk).update(next_run_at=timezone.now())

    found = values(beat_state())

    assert found["ordinaut_beat_due_backlog"] == 1
    assert found["ordinaut_beat_lock_held"] == 0
    assert found["ordinaut_beat_heartbeat_age_seconds"] == float("inf")

    redis_client.set(leader_key(), "someone", px=10_000)
    redis_client.set(beat_heartbeat_key(), f"{timezone.now().timestamp() - 7:.3f}")
    found = values(beat_state())
    assert found["ordinaut_beat_lock_held"] == 1
    assert 7 <= found["ordinaut_beat_heartbeat_age_seconds"] < 30


@pytest.fixture
def stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


def test_event_lag_counts_what_the_group_has_not_read_and_how_old_it_is(
    agent: Any, stream: str, redis_client: redis.Redis
) -> None:
    assert values(events_state())["ordinaut_events_consumer_lag_entries"] == 0
    for n in range(3):
        publish(agent.agent, "ops.lag", {"n": n})

    found = values(events_state())  # no consumer group yet: the whole stream is owed
    assert found["ordinaut_events_consumer_lag_entries"] == 3
    assert 0 <= found["ordinaut_events_consumer_lag_seconds"] < 30
    assert found["ordinaut_events_pending_entries"] == 0

    group = "ordinaut-events"
    redis_client.xgroup_create(stream, group, id="0")
    redis_client.xreadgroup(group, "reader", {stream: ">"}, count=2)  # read two, acknowledge none
    found = values(events_state())
    assert found["ordinaut_events_consumer_lag_entries"] == 1
    assert found["ordinaut_events_pending_entries"] == 2
    assert found["ordinaut_events_consumers_alive"] == 0

    redis_client.xreadgroup(group, "reader", {stream: ">"})
    assert values(events_state())["ordinaut_events_consumer_lag_seconds"] == 0


def test_queue_depth_reads_every_queue_with_its_priority_lists(own_queues: str, redis_client: redis.Redis) -> None:
    redis_client.rpush(own_queues, "m1", "m2")
    redis_client.rpush(f"{own_queues}\x06\x166", "urgent")
    redis_client.rpush(f"{own_queues}.schedule", "fire")

    found = values(metrics.celery_state())

    assert found[f"ordinaut_queue_depth{{queue={own_queues}}}"] == 3
    assert found[f"ordinaut_queue_depth{{queue={own_queues}.schedule}}"] == 1
    assert found["ordinaut_workers_alive"] == 0


def test_a_failing_source_is_reported_down_and_the_others_still_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> Iterator[Metric]:
        raise redis.ConnectionError("Redis is away")

    monkeypatch.setitem(metrics._sources, "broken", broken)

    found = values(metrics.StateCollector().collect())

    assert found["ordinaut_metrics_source_up{source=broken}"] == 0
    assert found["ordinaut_metrics_source_up{source=approvals}"] == 1
    assert "ordinaut_approvals_pending" in found


def test_the_web_serves_ordinauts_series_beside_django_prometheus() -> None:
    response = Client().get("/metrics")

    assert response.status_code == 200
    text = response.content.decode()
    for name in ("ordinaut_runs_finished_total", "ordinaut_approvals_pending", "ordinaut_queue_depth", "django_http"):
        assert name in text


def test_tool_calls_are_counted_by_outcome(monkeypatch: pytest.MonkeyPatch) -> None:
    def count(tool: str, outcome: str) -> float:
        server, name = tool.split(".", 1)
        labels = {"server": server, "tool": name, "outcome": outcome}
        return REGISTRY.get_sample_value("ordinaut_tool_calls_total", labels) or 0.0

    before = count("orchestrator.echo", "ok"), count("testing.bug", "error")

    assert tool_resolve("orchestrator.echo").func({"a": 1}, CALL) == {"a": 1}
    with pytest.raises(KeyError):
        tool_resolve("testing.bug").func({}, CALL)

    assert (count("orchestrator.echo", "ok"), count("testing.bug", "error")) == (before[0] + 1, before[1] + 1)


def test_tool_labels_are_capped_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_servers_seen", {"a", "b"})
    monkeypatch.setattr(metrics, "_tools_seen", {("a", "x")})
    monkeypatch.setattr(metrics, "MAX_SERVER_LABELS", 2)
    monkeypatch.setattr(metrics, "MAX_TOOL_LABELS", 1)

    assert metrics.tool_labels("a.x") == ("a", "x")
    assert metrics.tool_labels("a.y") == ("a", "other")  # the pair cap
    assert metrics.tool_labels("c.x") == ("other", "other")  # the server cap
    assert metrics.tool_labels("b." + "t" * 200)[1] in {"other", "t" * metrics.LABEL_MAX_CHARS}


def test_a_worker_without_a_directory_gets_a_private_one_and_removes_it(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    assert multiproc.worker_dir_prepare(["/venv/bin/celery", "-A", "ordinaut_site", "beat"], environ) is None
    assert multiproc.worker_dir_prepare(["manage.py", "consume_events"], environ) is None
    assert environ == {}

    path = multiproc.worker_dir_prepare(["/venv/bin/celery", "-A", "ordinaut_site", "worker", "-c", "2"], environ)

    assert path is not None
    assert environ[multiproc.ENV] == path
    assert os.path.isdir(path)
    multiproc.private_dir_remove(environ)
    assert not os.path.exists(path)

    shared = {multiproc.ENV: str(tmp_path)}
    assert multiproc.worker_dir_prepare(["celery", "worker"], shared) == str(tmp_path)
    multiproc.private_dir_remove(shared)
    assert tmp_path.is_dir(), "an operator's directory stays"
    assert multiproc.worker_dir_prepare(["celery", "worker"], {"ORDINAUT_METRICS_PORT_WORKER": "0"}) is None


def test_the_namespace_of_the_keys_is_the_default_queue(own_queues: str) -> None:
    assert current_app.conf.task_default_queue == own_queues
    assert leader_key().startswith(own_queues)
