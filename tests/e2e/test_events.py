"""Events end to end: POST /events -> the stream -> the events consumer -> runs on a real worker,
tasks chained by orchestrator.emit_event, and `manage.py consume_events` as its own process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client

from runs.models import Run, StepRun
from tasks.models import Event
from tests.support.events import clean_stream, make_consumer, pending_count
from tests.support.pipelines import echo_pipeline
from tests.support.processes import ConsumerProcess, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


@pytest.fixture(autouse=True)
def event_stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


def event_task(client: Any, topic: str, pipeline: list[dict[str, Any]], **fields: Any) -> str:
    body = {"title": f"on {topic}", "schedule_kind": "event", "schedule_expr": topic, "payload": {"pipeline": pipeline}}
    response = client.post("/tasks", {**body, **fields}, format="json")
    assert response.status_code == 201, response.json()
    return str(response.json()["id"])


def finished_run_of(task_id: str) -> Run | None:
    run = Run.objects.filter(task_id=task_id).first()
    return run if run is not None and run.status in Run.TERMINAL else None


def consume_until(predicate: Any, *, message: str) -> Any:
    """Run an in-process consumer a few reads at a time until predicate() holds."""
    consumer = make_consumer()

    def step() -> Any:
        consumer.run(iterations=2)
        return predicate()

    return wait_for(step, timeout=60, message=message)


def test_a_published_event_runs_the_matching_task_with_the_event_on_a_worker(
    agent: Any, worker: Any, redis_client: redis.Redis
) -> None:
    matching = event_task(
        agent.client,
        "email.*",
        [
            {
                "id": "read",
                "uses": "orchestrator.echo",
                "with": {"subject": "${event.payload.subject}", "topic": "${event.topic}"},
            }
        ],
    )
    other = event_task(agent.client, "sms.*", [{"id": "x", "uses": "orchestrator.echo", "with": {}}])

    published = agent.client.post(
        "/events", {"topic": "email.received", "payload": {"subject": "Invoice 42"}, "source": "imap"}, format="json"
    )
    assert published.status_code == 202, published.json()
    assert published.json()["stream_id"]

    run = consume_until(lambda: finished_run_of(matching), message="the event task's run to finish")

    assert run.status == Run.Status.SUCCEEDED
    assert (run.trigger, run.trigger_key) == ("event", f"event:{published.json()['id']}")
    assert StepRun.objects.get(run=run).output == {"subject": "Invoice 42", "topic": "email.received"}
    body = agent.client.get(f"/runs/{run.pk}").json()
    assert body["context"]["event"]["payload"] == {"subject": "Invoice 42"}
    assert body["context"]["event"]["source"] == "imap"
    assert not Run.objects.filter(task_id=other).exists()
    assert pending_count(redis_client) == 0
    assert Event.objects.get(pk=published.json()["id"]).consumed_at is not None


def test_emit_event_chains_two_tasks_through_a_topic(agent: Any, worker: Any) -> None:
    second = event_task(
        agent.client,
        "report.ready",
        [{"id": "deliver", "uses": "orchestrator.echo", "with": {"report": "${event.payload.report}"}}],
    )
    first = agent.client.post(
        "/tasks",
        {
            "title": "build the report",
            "schedule_kind": "manual",
            "payload": {
                "params": {"name": "weekly"},
                "pipeline": [
                    {"id": "build", "uses": "orchestrator.echo", "with": {"report": "${params.name} report"}},
                    {
                        "id": "announce",
                        "uses": "orchestrator.emit_event",
                        "with": {"topic": "report.ready", "payload": {"report": "${steps.build.report}"}},
                    },
                ],
            },
        },
        format="json",
    ).json()
    started = agent.client.post(f"/tasks/{first['id']}/run_now", format="json")
    assert started.status_code == 202

    first_run = wait_for(lambda: finished_run_of(first["id"]), timeout=60, message="the first task's run to finish")
    assert first_run.status == Run.Status.SUCCEEDED, first_run.error
    event = Event.objects.get(emitted_by_run=first_run)
    assert (event.topic, event.hops, event.publisher_id) == ("report.ready", 1, agent.agent.pk)
    assert event.stream_id, "the worker added the event to the stream"

    second_run = consume_until(lambda: finished_run_of(second), message="the chained task's run to finish")

    assert second_run.status == Run.Status.SUCCEEDED
    assert StepRun.objects.get(run=second_run).output == {"report": "weekly report"}
    assert second_run.context["event"]["hops"] == 1


# --- manage.py consume_events as a process ----------------------------------------------------


def test_the_consume_events_command_delivers_and_stops_cleanly_on_sigterm(
    agent: Any, worker: Any, tmp_path: Path
) -> None:
    task = event_task(
        agent.client, "deploy.*", [{"id": "note", "uses": "orchestrator.echo", "with": {"v": "${event.payload.v}"}}]
    )
    consumer = ConsumerProcess(tmp_path / "consume_events.log")
    try:
        wait_for(
            lambda: (
                Client().get("/health").json()["checks"]["events_consumer"]["ok"] or consumer.proc.poll() is not None
            ),
            timeout=60,
            message="the consumer's heartbeat",
        )
        assert consumer.proc.poll() is None, consumer.log()
        assert "e2e-consumer" in Client().get("/health").json()["checks"]["events_consumer"]["consumers"]

        published = agent.client.post("/events", {"topic": "deploy.done", "payload": {"v": 3}}, format="json")
        assert published.status_code == 202

        run = wait_for(lambda: finished_run_of(task), timeout=60, message="the event task's run to finish")
        assert run.status == Run.Status.SUCCEEDED
        assert StepRun.objects.get(run=run).output == {"v": 3}
    finally:
        code = consumer.stop()

    log = consumer.log()
    assert code == 0, log
    assert "events consumer e2e-consumer started" in log
    assert "SIGTERM, stopping" in log
    assert "events consumer e2e-consumer stopped: 1 event(s) delivered, 1 run(s)" in log
    assert Client().get("/health").json()["status"] == "degraded"


def test_two_events_published_together_both_run_in_publication_order_by_default(agent: Any, worker: Any) -> None:
    # The pipeline waits a second, so the second event arrives while the first run is active:
    # under the clock schedules' default (skip) it would be a skipped run, reason overlap.
    task_id = event_task(
        agent.client,
        "mail.received",
        [
            {"id": "hold", "uses": "orchestrator.wait", "with": {"seconds": 1}},
            {"id": "read", "uses": "orchestrator.echo", "with": {"n": "${event.payload.n}"}},
        ],
    )
    assert agent.client.get(f"/tasks/{task_id}").json()["overlap"] == "queue"

    published = [
        agent.client.post("/events", {"topic": "mail.received", "payload": {"n": n}}, format="json").json()["id"]
        for n in (1, 2)
    ]

    def both_finished() -> list[Run] | None:
        runs = list(Run.objects.filter(task_id=task_id).order_by("started_at"))
        return runs if len(runs) == 2 and all(run.status in Run.TERMINAL for run in runs) else None

    runs = consume_until(both_finished, message="both event runs to finish")

    assert [run.status for run in runs] == [Run.Status.SUCCEEDED, Run.Status.SUCCEEDED]
    assert [run.trigger_key for run in runs] == [f"event:{event_id}" for event_id in published]
    assert [StepRun.objects.get(run=run, step_id="read").output for run in runs] == [{"n": 1}, {"n": 2}]
    assert runs[0].finished_at is not None
    assert runs[1].started_at is not None
    assert runs[1].started_at >= runs[0].finished_at, "queued: the second starts after the first ends"


def test_an_event_task_can_still_ask_for_skip(agent: Any) -> None:
    task_id = event_task(agent.client, "mail.*", [{"id": "x", "uses": "orchestrator.echo", "with": {}}], overlap="skip")
    assert agent.client.get(f"/tasks/{task_id}").json()["overlap"] == "skip"
    cron = agent.client.post(
        "/tasks",
        {"title": "c", "schedule_kind": "cron", "schedule_expr": "0 9 * * *", "payload": echo_pipeline(1)},
        format="json",
    )
    assert cron.json()["overlap"] == "skip"
