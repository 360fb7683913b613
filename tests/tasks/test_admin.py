"""The admin shows tasks with their schedule text and next fire times, runs the actions through
the services, and shows beat rows (RRULE inline) read-only for Ordinaut tasks."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

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


def _crontab_form(crontab: Any, **changes: str) -> dict[str, str]:
    fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    form = {name: getattr(crontab, name) for name in fields}
    form["timezone"] = str(crontab.timezone)
    inline = {"periodictask_set-TOTAL_FORMS": "0", "periodictask_set-INITIAL_FORMS": "0"}  # dcb's inline
    return {**form, **inline, **changes, "_save": "Save"}


def test_an_ordinaut_crontab_edited_in_the_admin_is_refused_and_links_to_its_task(
    operator: Client, make_task: Any
) -> None:
    task = make_task("cron", "0 9 * * *", "Europe/Chisinau")
    crontab = PeriodicTask.objects.get(pk=task.periodic_task_id).crontab
    url = f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/change/"

    page = operator.get(url).content.decode()
    assert f"/admin/tasks/task/{task.pk}/change/" in page, "the page links to the owning task"
    assert "change the task instead" in page
    assert 'name="_save"' not in page

    response = operator.post(url, _crontab_form(crontab, minute="30", hour="10"))
    assert response.status_code == 403
    crontab.refresh_from_db()
    assert (crontab.minute, crontab.hour) == ("0", "9"), "the row is unchanged"
    assert (
        operator.post(f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    assert CrontabSchedule.objects.filter(pk=crontab.pk).exists()
    assert Task.objects.get(pk=task.pk).schedule_expr == "0 9 * * *"


def test_an_operators_own_crontab_stays_editable(operator: Client) -> None:
    crontab = CrontabSchedule.objects.create(minute="0", hour="4", timezone="UTC")
    url = f"/admin/django_celery_beat/crontabschedule/{crontab.pk}/change/"
    assert 'name="_save"' in operator.get(url).content.decode()
    response = operator.post(url, _crontab_form(crontab, minute="15"))
    assert response.status_code == 302, response.content.decode()[:2000]
    crontab.refresh_from_db()
    assert crontab.minute == "15"


def test_interval_and_clocked_rows_of_tasks_are_read_only_too(operator: Client, make_task: Any) -> None:
    interval = PeriodicTask.objects.get(pk=make_task("interval", "PT15M").periodic_task_id).interval
    response = operator.post(
        f"/admin/django_celery_beat/intervalschedule/{interval.pk}/change/", {"every": "1", "period": "seconds"}
    )
    assert response.status_code == 403
    interval.refresh_from_db()
    assert interval.every == 900
    clocked = PeriodicTask.objects.get(pk=make_task("once", "2030-01-01T09:00:00+00:00").periodic_task_id).clocked
    page = operator.get(f"/admin/django_celery_beat/clockedschedule/{clocked.pk}/change/").content.decode()
    assert 'name="_save"' not in page


def test_bulk_actions_on_periodic_tasks_leave_the_rows_of_tasks_alone(operator: Client, make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *")
    crontab = CrontabSchedule.objects.create(minute="0", hour="4", timezone="UTC")
    own = PeriodicTask.objects.create(name="operator's own", task="celery.backend_cleanup", crontab=crontab)
    selected = [str(task.periodic_task_id), str(own.pk)]
    response = operator.post(
        "/admin/django_celery_beat/periodictask/",
        {"action": "disable_tasks", "_selected_action": selected},
        follow=True,
    )
    assert "1 row of Ordinaut tasks left as they are" in response.content.decode()
    assert PeriodicTask.objects.get(pk=task.periodic_task_id).enabled
    assert not PeriodicTask.objects.get(pk=own.pk).enabled


def test_a_parked_task_shows_why_in_the_admin(operator: Client, make_task: Any) -> None:
    task = make_task("cron", "0 9 * * *")
    Task.objects.filter(pk=task.pk).update(schedule_error="ValueError: broken row", schedule_parked_at=timezone.now())
    assert "ValueError: broken row" in operator.get(f"/admin/tasks/task/{task.pk}/change/").content.decode()
    listing = operator.get("/admin/tasks/task/?schedule_parked_at__isempty=0").content.decode()
    assert task.title in listing
