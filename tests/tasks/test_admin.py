"""The admin shows tasks with their schedule text and next fire times, runs the actions through
the services, and shows beat rows (RRULE inline) read-only for Ordinaut tasks."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from ordinaut_site.models import AuditLog
from runs.models import Run
from tasks.models import Task

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(admin_client: Client) -> Client:
    return admin_client


def test_task_list_and_page_show_schedule_text_and_next_fire_times(operator: Client, make_task: Any) -> None:
    task = make_task("rrule", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=8;BYMINUTE=30", "Europe/Chisinau")
    listing = operator.get("/admin/tasks/task/")
    assert listing.status_code == 200
    assert "Every weekday (Monday to Friday)" in listing.content.decode()
    page = operator.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    assert page.count("08:30:00+0") >= 5, "five upcoming fire times with offsets"


def test_actions_go_through_the_services(operator: Client, make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *")
    operator.post("/admin/tasks/task/", {"action": "pause", "_selected_action": [str(task.pk)]})
    assert Task.objects.get(pk=task.pk).status == "paused"
    operator.post("/admin/tasks/task/", {"action": "resume", "_selected_action": [str(task.pk)]})
    assert Task.objects.get(pk=task.pk).status == "active"
    operator.post("/admin/tasks/task/", {"action": "snooze_one_hour", "_selected_action": [str(task.pk)]})
    assert Task.objects.get(pk=task.pk).snoozed_until is not None
    operator.post("/admin/tasks/task/", {"action": "run_now", "_selected_action": [str(task.pk)]})
    assert Run.objects.filter(task=task, trigger="manual").count() == 1
    actors = set(
        AuditLog.objects.filter(subject_id=str(task.pk), action__startswith="task.").values_list(
            "actor_kind", flat=True
        )
    )
    assert "user" in actors


def test_beat_rows_are_visible_and_read_only_for_ordinaut_tasks(operator: Client, make_task: Any) -> None:
    task = make_task("rrule", "FREQ=DAILY;BYHOUR=7", "UTC")
    assert operator.get("/admin/django_celery_beat/periodictask/").status_code == 200
    page = operator.get(f"/admin/django_celery_beat/periodictask/{task.periodic_task_id}/change/")
    assert page.status_code == 200
    assert "FREQ=DAILY;BYHOUR=7" in page.content.decode()
    assert 'name="_save"' not in page.content.decode(), "edited on the task, not here"
