"""Admin pages beyond the browser's walk: the task form keeps every field, beat's pages are off
the index yet reachable, foreach items have a read-only list of their own, events and the audit
log show their JSON folded."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.utils import flatten_fieldsets
from django.test import Client

from ordinaut_site.models import AuditLog
from runs.models import StepItem
from tasks.admin import EDITABLE, TASK_FIELDSETS, TASK_RECORD_FIELDSET, TASK_STATE_FIELDSETS, TaskAdmin
from tests.support.pipelines import run_in_process

pytestmark = pytest.mark.django_db

BEAT_PATHS = [
    "/admin/django_celery_beat/periodictask/",
    "/admin/django_celery_beat/crontabschedule/",
    "/admin/django_celery_beat/intervalschedule/",
    "/admin/django_celery_beat/clockedschedule/",
    "/admin/django_celery_beat/solarschedule/",
]


def _names(fieldsets: Any) -> set[Any]:
    return set(flatten_fieldsets(fieldsets))


def test_the_task_form_groups_every_editable_field_and_the_page_every_read_only_one() -> None:
    assert _names(TASK_FIELDSETS) == set(EDITABLE)
    page = _names([*TASK_FIELDSETS, *TASK_STATE_FIELDSETS, TASK_RECORD_FIELDSET])
    assert set(TaskAdmin.readonly_fields) <= page


def test_beats_models_are_off_the_index_but_their_pages_answer(admin_client: Client, make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *", title="Morning briefing")

    index = admin_client.get("/admin/").content.decode()

    assert "django_celery_beat" not in index
    assert "Periodic tasks" not in index
    for path in BEAT_PATHS:
        assert admin_client.get(path).status_code == 200, path
    assert admin_client.get("/admin/django_celery_beat/").status_code == 404, "no app page either"
    page = admin_client.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    assert f"/admin/django_celery_beat/periodictask/{task.periodic_task_id}/change/" in page


def test_the_task_form_shows_its_payload_pretty_printed_and_saves_it(admin_client: Client, make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *", title="Morning briefing")
    page = admin_client.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    assert '<details class="json json-edit">' in page
    assert "\n  &quot;pipeline&quot;: [\n" in page

    form = admin_client.get(f"/admin/tasks/task/{task.pk}/change/").context["adminform"].form
    data = {name: form[name].value() for name in EDITABLE if form[name].value() is not None}
    data["payload"] = form["payload"].field.widget.format_value(form["payload"].value())
    data["title"] = "Morning briefing, renamed"
    response = admin_client.post(f"/admin/tasks/task/{task.pk}/change/", {**data, "owner": task.owner_id})

    assert response.status_code == 302, response.context["adminform"].form.errors
    task.refresh_from_db()
    assert task.title == "Morning briefing, renamed"
    assert task.payload["pipeline"][0]["id"] == "a"


def test_foreach_items_are_listed_by_status_read_only_linking_their_run(admin_client: Client, agent: Any) -> None:
    payload = {
        "pipeline": [
            {
                "id": "notify",
                "uses": "telegram-mcp.send_message",
                "foreach": [1, "two", 3],
                "with": {"chat_id": "${item}", "text": "hi"},
                "on_error": "continue",
            }
        ]
    }
    run = run_in_process(agent.agent, payload, title="Chat reminders")
    failed = StepItem.objects.get(step__run=run, status="failed")

    listing = admin_client.get("/admin/runs/stepitem/?status__exact=failed")

    assert [item.pk for item in listing.context["cl"].result_list] == [failed.pk]
    assert "Chat reminders · notify [1]" in listing.content.decode()
    page = admin_client.get(f"/admin/runs/stepitem/{failed.pk}/change/")
    body = page.content.decode()
    assert f"/admin/runs/run/{run.pk}/change/" in body
    assert "input_invalid" in body
    assert 'name="_save"' not in body
    assert admin_client.post(f"/admin/runs/stepitem/{failed.pk}/change/", {}).status_code == 403
    assert admin_client.get("/admin/runs/stepitem/add/").status_code == 403
    assert admin_client.post(f"/admin/runs/stepitem/{failed.pk}/delete/", {"post": "yes"}).status_code == 403


def test_the_run_list_names_runs_by_their_task(admin_client: Client, agent: Any) -> None:
    run = run_in_process(agent.agent, {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}]}, title="Nightly export")

    body = admin_client.get("/admin/runs/run/").content.decode()

    assert f'<a href="/admin/runs/run/{run.pk}/change/">Nightly export</a>' in body
    assert str(run.task_id) not in body


def test_events_and_audit_entries_show_their_json_folded(admin_client: Client, agent: Any) -> None:
    published = agent.client.post("/events", {"topic": "invoices.overdue", "payload": {"n": 1}}, format="json")
    assert published.status_code in (201, 202), published.json()
    event_id = published.json()["id"]
    entry = AuditLog.objects.order_by("-at").first()
    assert entry is not None

    event_page = admin_client.get(f"/admin/tasks/event/{event_id}/change/").content.decode()
    audit_page = admin_client.get(f"/admin/ordinaut/auditlog/{entry.pk}/change/").content.decode()

    assert '<details class="json"><summary>{&quot;n&quot;: 1}</summary>' in event_page
    assert 'name="_save"' not in event_page
    assert 'class="json"' in audit_page
    assert 'name="_save"' not in audit_page


def test_a_run_is_found_by_its_id_or_its_tasks_title(admin_client: Client, agent: Any) -> None:
    run = run_in_process(agent.agent, {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}]}, title="Nightly export")
    other = run_in_process(agent.agent, {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}]}, title="Other")

    for term in (str(run.pk), "nightly"):
        found = admin_client.get("/admin/runs/run/", {"q": term}).context["cl"].result_list
        assert [row.pk for row in found] == [run.pk], term
    assert admin_client.get("/admin/runs/run/", {"q": "not-a-uuid"}).status_code == 200
    assert other.pk != run.pk
