"""Event retention: consumed events past ORDINAUT_EVENT_RETENTION_DAYS go; unconsumed ones and their
runs stay, whatever their age."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import Actor
from runs.models import Run
from tasks.events import event_deliver, event_publish
from tasks.jobs import purge_events_job
from tasks.models import Event

pytestmark = pytest.mark.django_db

ACTOR = Actor.system("tests")


def _published(agent: Any, days_ago: float, *, consumed: bool) -> Event:
    event = event_publish(publisher=agent, actor=ACTOR, topic="mail.received", payload={"n": days_ago})
    if consumed:
        event_deliver(event_id=str(event.pk))
    at = timezone.now() - timedelta(days=days_ago)
    Event.objects.filter(pk=event.pk).update(published_at=at)
    event.refresh_from_db()
    assert (event.consumed_at is not None) == consumed
    return event


def test_old_consumed_events_go_and_the_rest_stays(agent: Any, make_task: Any, settings: Any) -> None:
    settings.ORDINAUT_EVENT_RETENTION_DAYS = 30
    task = make_task("event", "mail.*")
    old = _published(agent.agent, 40, consumed=True)
    recent = _published(agent.agent, 5, consumed=True)
    owed = _published(agent.agent, 400, consumed=False)

    assert purge_events_job() == 1

    assert set(Event.objects.values_list("pk", flat=True)) == {recent.pk, owed.pk}
    assert old.pk not in set(Event.objects.values_list("pk", flat=True))
    # The old event's run stays, with the event in its context.
    run = Run.objects.get(task=task, trigger_key=f"event:{old.pk}")
    assert run.context["event"]["id"] == str(old.pk)


def test_retention_off_keeps_every_event(agent: Any, settings: Any) -> None:
    settings.ORDINAUT_EVENT_RETENTION_DAYS = 0
    _published(agent.agent, 4000, consumed=True)

    assert purge_events_job() == 0
    assert Event.objects.count() == 1


def test_beat_purges_events_daily(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["ordinaut.purge_events"]
    assert (entry["task"], entry["schedule"]) == (purge_events_job.name, 86400.0)
