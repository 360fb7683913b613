"""The admin lists events read-only: who published what, whether it reached the stream and the consumer."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from ordinaut_site.audit import Actor
from tasks.events import event_publish

pytestmark = pytest.mark.django_db


def test_events_are_listed_and_shown_but_never_edited(admin_client: Client, agent: Any) -> None:
    event = event_publish(
        publisher=agent.agent, actor=Actor.system("tests"), topic="email.received", payload={"subject": "Hi"}
    )

    listing = admin_client.get("/admin/tasks/event/")
    page = admin_client.get(f"/admin/tasks/event/{event.pk}/change/")

    assert listing.status_code == 200
    assert "email.received" in listing.content.decode()
    assert page.status_code == 200
    assert "subject" in page.content.decode()
    assert 'name="_save"' not in page.content.decode()
    assert admin_client.get("/admin/tasks/event/add/").status_code == 403
    assert admin_client.post(f"/admin/tasks/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
