"""DELETE /agents/{id}: the agent stops authenticating; nothing is erased, the audit trail stays."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import Agent, AuditLog
from ordinaut_site.services import agent_deactivate, agent_reactivate
from runs.models import Run
from tasks.models import Task
from tasks.services import task_fire
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


def test_deactivated_agent_can_no_longer_authenticate(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    target = make_agent()
    assert target.client.get("/agents/me").status_code == 200

    response = admin.client.delete(f"/agents/{target.agent.pk}")

    assert response.status_code == 204
    assert target.client.get("/agents/me").status_code == 401
    target.agent.refresh_from_db()
    assert target.agent.is_active is False
    assert target.agent.deactivated_at is not None
    listed = admin.client.get(f"/agents/{target.agent.pk}").json()
    assert listed["is_active"] is False


def test_deactivation_keeps_the_agent_and_its_audit_trail(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    target = make_agent()
    before = AuditLog.objects.filter(subject_id=str(target.agent.pk)).count()

    admin.client.delete(f"/agents/{target.agent.pk}")
    admin.client.delete(f"/agents/{target.agent.pk}")  # twice: nothing more happens

    assert Agent.objects.filter(pk=target.agent.pk).exists()
    rows = AuditLog.objects.filter(subject_id=str(target.agent.pk))
    assert rows.count() == before + 1
    assert rows.filter(action="agent.deactivate", actor_name=admin.agent.name).count() == 1


def test_agents_admin_cannot_deactivate_a_stronger_agent(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin"])
    admin = make_agent(admin=True)
    response = manager.client.delete(f"/agents/{admin.agent.pk}")
    assert response.status_code == 403
    assert Agent.objects.get(pk=admin.agent.pk).is_active


def test_deactivate_unknown_agent_is_404(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    assert admin.client.delete("/agents/00000000-0000-0000-0000-000000000000").status_code == 404


def test_deactivate_needs_agents_admin(make_agent: Any) -> None:
    plain = make_agent(scopes=["tasks:write"])
    other = make_agent()
    assert plain.client.delete(f"/agents/{other.agent.pk}").status_code == 403
    assert Agent.objects.get(pk=other.agent.pk).is_active


# --- A deactivated agent's tasks stop running ------------------------------------------------


def cron_task(handle: Any, title: str = "t") -> str:
    body = {"title": title, "schedule_kind": "cron", "schedule_expr": "* * * * *", "payload": echo_pipeline(1)}
    response = handle.client.post("/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    return str(response.json()["id"])


def test_deactivating_an_agent_pauses_its_active_tasks_and_lists_them(make_agent: Any) -> None:
    admin, target = make_agent(admin=True), make_agent()
    active = cron_task(target, "active")
    paused = cron_task(target, "paused")
    canceled = cron_task(target, "canceled")
    target.client.post(f"/tasks/{paused}/pause")
    target.client.post(f"/tasks/{canceled}/cancel")

    assert admin.client.delete(f"/agents/{target.agent.pk}").status_code == 204

    statuses = dict(Task.objects.filter(owner=target.agent).values_list("title", "status"))
    assert statuses == {"active": "paused", "paused": "paused", "canceled": "canceled"}
    assert Task.objects.get(pk=active).next_run_at is None
    row = AuditLog.objects.get(action="agent.deactivate", subject_id=str(target.agent.pk))
    assert row.details == {"paused_tasks": [active]}
    pause = AuditLog.objects.get(action="task.pause", subject_id=active)
    assert (pause.actor_name, pause.request_id) == (admin.agent.name, row.request_id)


def test_a_deactivated_owners_task_does_not_fire_even_when_resumed(make_agent: Any) -> None:
    admin, target = make_agent(admin=True), make_agent()
    task_id = cron_task(target)
    admin.client.delete(f"/agents/{target.agent.pk}")
    assert admin.client.post(f"/tasks/{task_id}/resume").status_code == 200  # an admin may
    due = Task.objects.get(pk=task_id).next_run_at
    assert due is not None

    assert task_fire(task_id=task_id, scheduled_for=due, now=due) is None

    assert not Run.objects.filter(task_id=task_id).exists()


def test_run_now_of_a_deactivated_owners_task_is_409(make_agent: Any) -> None:
    admin, target = make_agent(admin=True), make_agent()
    task_id = cron_task(target)
    admin.client.delete(f"/agents/{target.agent.pk}")

    response = admin.client.post(f"/tasks/{task_id}/run_now", {}, format="json")

    assert response.status_code == 409
    assert "deactivated" in response.json()["error"]["message"]
    assert not Run.objects.filter(task_id=task_id).exists()


def test_reactivation_resumes_the_tasks_the_deactivation_paused_and_no_others(make_agent: Any) -> None:
    target = make_agent()
    by_deactivation = cron_task(target, "by deactivation")
    by_hand = cron_task(target, "by hand")
    target.client.post(f"/tasks/{by_hand}/pause")
    agent_deactivate(agent=target.agent, actor=SYSTEM)

    agent_reactivate(agent=target.agent, actor=SYSTEM)

    assert Task.objects.get(pk=by_deactivation).status == Task.Status.ACTIVE
    assert Task.objects.get(pk=by_deactivation).next_run_at is not None
    assert Task.objects.get(pk=by_hand).status == Task.Status.PAUSED
    row = AuditLog.objects.get(action="agent.reactivate", subject_id=str(target.agent.pk))
    assert row.details == {"resumed_tasks": [by_deactivation]}
    assert target.client.get("/agents/me").status_code == 200
