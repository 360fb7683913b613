"""Delivering an event: which event tasks it reaches, the runs it creates (with the event in their
context, under the scheduler's policies), and never twice."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.audit import Actor
from ordinaut_site.models import SCOPE_EVENTS_PUBLISH
from ordinaut_site.services import token_issue
from runs.models import Run, StepRun
from tasks.events import event_deliver, event_publish
from tasks.models import Event, Task
from tasks.services import task_cancel, task_delete, task_pause
from tests.support.pipelines import drive

pytestmark = pytest.mark.django_db
ACTOR = Actor.system("tests")
SUBJECT_PIPELINE = {
    "pipeline": [{"id": "read", "uses": "orchestrator.echo", "with": {"subject": "${event.payload.subject}"}}]
}


def publish(agent: Any, topic: str, **payload: Any) -> Event:
    return event_publish(publisher=agent, actor=ACTOR, topic=topic, payload=payload)


def deliver(event: Event) -> list[Run]:
    runs = event_deliver(event_id=str(event.pk))
    assert runs is not None
    return runs


def test_a_glob_task_gets_one_run_with_the_event_in_its_context(agent: Any, make_task: Any) -> None:
    task = make_task("event", "email.*", payload=SUBJECT_PIPELINE)
    event = publish(agent.agent, "email.received", subject="Invoice 42")

    [run] = deliver(event)

    assert (run.task_id, run.trigger, run.trigger_key, run.status) == (task.pk, "event", f"event:{event.pk}", "queued")
    assert run.scheduled_for == event.published_at
    assert run.context["event"] == {
        "id": str(event.pk),
        "topic": "email.received",
        "payload": {"subject": "Invoice 42"},
        "source": "",
        "publisher": {"id": str(agent.agent.pk), "name": agent.agent.name},
        "published_at": event.published_at.isoformat(),
        "hops": 0,
    }
    assert Event.objects.get(pk=event.pk).consumed_at is not None
    assert Task.objects.get(pk=task.pk).last_run_at == event.published_at


def test_the_steps_read_the_event_through_templates(agent: Any, make_task: Any) -> None:
    make_task("event", "email.received", payload=SUBJECT_PIPELINE)
    [run] = deliver(publish(agent.agent, "email.received", subject="Invoice 42"))

    drive(run.pk)

    assert StepRun.objects.get(run=run).output == {"subject": "Invoice 42"}
    assert Run.objects.get(pk=run.pk).status == "succeeded"


@pytest.mark.parametrize(
    ("pattern", "topic", "fires"),
    [
        ("email.*", "email.received", True),
        ("email.*", "email.received.spam", True),  # fnmatch: * crosses dots
        ("email.*", "sms.received", False),
        ("email.*", "email", False),
        ("email.received", "email.received", True),
        ("email.received", "email.receivedx", False),
        ("email.received", "Email.received", False),  # case-sensitive
        ("alert.?", "alert.1", True),
        ("build.[ab]", "build.b", True),
        ("build.[ab]", "build.c", False),
    ],
)
def test_topic_matching_is_exact_or_glob(agent: Any, make_task: Any, pattern: str, topic: str, fires: bool) -> None:
    make_task("event", pattern)
    assert len(deliver(publish(agent.agent, topic))) == (1 if fires else 0)


def test_an_event_that_matches_nothing_is_consumed_without_runs(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*")
    event = publish(agent.agent, "sms.received")

    assert deliver(event) == []
    assert not Run.objects.exists()
    assert Event.objects.get(pk=event.pk).consumed_at is not None


def test_an_agent_event_reaches_only_that_agents_tasks(agent: Any, make_task: Any, make_agent: Any) -> None:
    make_task("event", "email.*")
    stranger = make_agent(scopes=[SCOPE_EVENTS_PUBLISH])

    assert deliver(publish(stranger.agent, "email.received")) == []
    assert not Run.objects.exists()


def test_an_admin_event_reaches_every_agents_tasks(agent: Any, make_task: Any, make_agent: Any) -> None:
    task = make_task("event", "email.*")
    admin = make_agent(admin=True)

    [run] = deliver(publish(admin.agent, "email.received"))

    assert run.task_id == task.pk
    assert run.context["event"]["publisher"]["id"] == str(admin.agent.pk)


def test_an_admin_publishing_with_a_token_narrowed_to_events_publish_reaches_only_its_own_tasks(
    agent: Any, make_task: Any, make_agent: Any
) -> None:
    make_task("event", "email.*")
    admin = make_agent(admin=True)
    _, raw = token_issue(agent=admin.agent, actor=ACTOR, scopes=[SCOPE_EVENTS_PUBLISH])
    narrowed = APIClient()
    narrowed.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")

    response = narrowed.post("/events", {"topic": "email.received", "payload": {}}, format="json")

    assert response.status_code == 202, response.json()
    event = Event.objects.get(pk=response.json()["id"])
    assert event.broadcast is False
    assert deliver(event) == []
    assert publish(admin.agent, "email.received").broadcast is True


def test_paused_canceled_deleted_and_other_kinds_of_tasks_do_not_fire(agent: Any, make_task: Any) -> None:
    task_pause(task=make_task("event", "email.*"), actor=ACTOR)
    task_cancel(task=make_task("event", "email.*"), actor=ACTOR)
    task_delete(task=make_task("event", "email.*"), actor=ACTOR)
    make_task("manual", "")
    make_task("cron", "0 9 * * *")

    assert deliver(publish(agent.agent, "email.received")) == []


def test_a_false_condition_records_a_skipped_run(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", condition="event.payload.priority == 'high'")

    [low] = deliver(publish(agent.agent, "email.received", priority="low"))
    [high] = deliver(publish(agent.agent, "email.received", priority="high"))

    assert (low.status, low.skip_reason, low.trigger) == ("skipped", "condition", "event")
    assert not low.steps.exists()
    assert (high.status, high.skip_reason) == ("queued", "")


def test_overlap_skip_records_a_skipped_run_while_the_previous_one_is_active(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="skip")
    [first] = deliver(publish(agent.agent, "email.received"))
    [second] = deliver(publish(agent.agent, "email.received"))

    assert first.status == "queued"
    assert (second.status, second.skip_reason) == ("skipped", "overlap")


def test_overlap_allow_runs_every_event(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="allow")
    runs = [run for _ in range(3) for run in deliver(publish(agent.agent, "email.received"))]
    assert [run.status for run in runs] == ["queued"] * 3


def test_overlap_queue_holds_the_next_event_run(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="queue")
    deliver(publish(agent.agent, "email.received"))
    [held] = deliver(publish(agent.agent, "email.received"))
    assert (held.status, held.deadline_at, held.dispatch_count) == ("queued", None, 0)


def test_one_event_fires_each_matching_task_once(agent: Any, make_task: Any) -> None:
    tasks = {make_task("event", "email.*").pk, make_task("event", "email.received").pk}
    make_task("event", "sms.*")

    runs = deliver(publish(agent.agent, "email.received"))

    assert {run.task_id for run in runs} == tasks


def test_delivering_an_event_again_creates_nothing(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*", overlap="allow")
    event = publish(agent.agent, "email.received")
    assert len(deliver(event)) == 1

    assert deliver(event) == []
    # Even if it were not marked consumed, the trigger key allows one run per (task, event).
    Event.objects.filter(pk=event.pk).update(consumed_at=None)
    assert deliver(event) == []
    assert Run.objects.count() == 1


def test_an_event_that_does_not_exist_is_none() -> None:
    assert event_deliver(event_id="0b0b0b0b-0000-4000-8000-000000000000") is None
    assert event_deliver(event_id="not-a-uuid") is None


# --- orchestrator.emit_event: tasks chain through topics --------------------------------------


def emitter(topic: str, **payload: Any) -> dict[str, Any]:
    return {
        "params": {"n": 7},
        "pipeline": [{"id": "emit", "uses": "orchestrator.emit_event", "with": {"topic": topic, "payload": payload}}],
    }


def test_emit_event_publishes_as_the_task_owner_and_the_next_task_runs(agent: Any, make_task: Any) -> None:
    first = make_task("manual", "", payload=emitter("chain.next", n="${params.n}"))
    second = make_task(
        "event", "chain.*", payload={"pipeline": [{"uses": "orchestrator.echo", "with": {"got": "${event.payload.n}"}}]}
    )
    run = Run.objects.get(pk=_run_now(first))

    drive(run.pk)

    step = StepRun.objects.get(run=run)
    event = Event.objects.get()
    assert step.status == "succeeded"
    assert step.output == {"id": str(event.pk), "topic": "chain.next"}
    assert (event.publisher_id, event.payload, event.hops) == (agent.agent.pk, {"n": 7}, 1)
    assert event.emitted_by_run_id == run.pk
    assert event.source == f"run:{run.pk}"
    [chained] = deliver(event)
    drive(chained.pk)
    assert chained.task_id == second.pk
    assert StepRun.objects.get(run=chained).output == {"got": 7}


def _run_now(task: Task) -> Any:
    from tasks.services import task_run_now

    return task_run_now(task=task, actor=ACTOR).pk


def test_a_step_that_runs_again_emits_its_event_once(agent: Any, make_task: Any) -> None:
    from pipelines.tools import ToolCall, tool_resolve

    run = Run.objects.get(pk=_run_now(make_task("manual", "", payload=emitter("once"))))
    tool = tool_resolve("orchestrator.emit_event")
    call = ToolCall(run_id=str(run.pk), step_id="emit", timeout_s=5)

    first = tool.func({"topic": "once", "payload": {"a": 1}}, call)
    again = tool.func({"topic": "once", "payload": {"a": 1}}, call)

    assert first == again
    assert Event.objects.count() == 1


def test_a_task_emitting_its_own_topic_stops_at_the_hop_limit(agent: Any, make_task: Any, settings: Any) -> None:
    settings.ORDINAUT_EVENT_MAX_HOPS = 2
    make_task("event", "loop", payload=emitter("loop"), overlap="allow")
    event = publish(agent.agent, "loop")
    hops = []

    for _ in range(5):
        runs = deliver(event)
        if not runs:
            break
        drive(runs[0].pk)
        run = Run.objects.get(pk=runs[0].pk)
        hops.append((run.context["event"]["hops"], run.status))
        emitted = Event.objects.filter(emitted_by_run=run).first()
        if emitted is None:
            break
        event = emitted

    assert hops == [(0, "succeeded"), (1, "succeeded"), (2, "failed")]
    error = Run.objects.get(status="failed").error or {}
    assert error["code"] == "event_hops_exceeded"
    assert "ORDINAUT_EVENT_MAX_HOPS" in error["message"]
    assert Event.objects.count() == 3


def test_emit_event_refuses_a_bad_topic_before_publishing(agent: Any, make_task: Any) -> None:
    run = Run.objects.get(pk=_run_now(make_task("manual", "", payload=emitter("has space"))))
    drive(run.pk)
    assert (StepRun.objects.get(run=run).error or {})["code"] == "input_invalid"
    assert not Event.objects.exists()


def test_by_default_an_event_while_the_previous_run_is_active_is_held_not_dropped(agent: Any, make_task: Any) -> None:
    make_task("event", "email.*")
    [first] = deliver(publish(agent.agent, "email.received"))
    [second] = deliver(publish(agent.agent, "email.received"))

    assert first.status == "queued"
    assert (second.status, second.skip_reason) == ("queued", "")
    assert first.scheduled_for is not None
    assert second.scheduled_for is not None
    assert second.scheduled_for >= first.scheduled_for
