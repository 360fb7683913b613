"""MCP task tools: they create, read and change tasks through the API's services and answer the API's JSON."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.models import AuditLog
from runs.models import Run
from tasks.models import Task
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db

CRON = {"schedule_kind": "cron", "schedule_expr": "0 9 * * *", "timezone": "Europe/Chisinau"}


def test_create_task_answers_what_get_tasks_id_answers(tools: Any, agent: Any) -> None:
    created = tools.ok("create_task", title="briefing", payload=echo_pipeline(2), **CRON)

    assert created["title"] == "briefing"
    assert created["status"] == "active"
    assert created["created_by"] == {"id": str(agent.agent.pk), "name": agent.agent.name}
    assert created["schedule_description"]
    assert created["next_run_at"] is not None
    assert agent.client.get(f"/tasks/{created['id']}").json() == created


def test_create_task_is_audited_with_the_agent_as_actor(tools: Any, agent: Any) -> None:
    created = tools.ok("create_task", title="audited", schedule_kind="manual", payload=echo_pipeline(1))

    row = AuditLog.objects.get(action="task.create", subject_id=created["id"])
    assert (row.actor_kind, row.actor_id, row.actor_name) == ("agent", str(agent.agent.pk), agent.agent.name)
    assert row.request_id


def test_a_bad_schedule_is_a_validation_error_naming_the_field(tools: Any) -> None:
    error = tools.error(
        "create_task", title="x", schedule_kind="cron", schedule_expr="61 * * * *", payload=echo_pipeline(1)
    )

    assert error["code"] == "validation_error"
    assert error["message"].startswith("schedule_expr: ")
    assert list(error["fields"]) == ["schedule_expr"]
    assert not Task.objects.exists()


def test_a_serializer_error_has_the_message_and_fields_of_the_rest_api(tools: Any, agent: Any) -> None:
    body = {"title": "x", "schedule_kind": "manual", "payload": echo_pipeline(1), "priority": 12}

    error = tools.error("create_task", **body)

    rest = agent.client.post("/tasks", body, format="json").json()["error"]
    assert error == rest
    assert error["fields"] == {"priority": [error["fields"]["priority"][0]]}
    assert error["message"].startswith("priority: ")


def test_a_payload_error_names_the_step_field(tools: Any) -> None:
    payload = {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}, {"id": "a", "uses": "orchestrator.echo"}]}

    error = tools.error("create_task", title="dup", schedule_kind="manual", payload=payload)

    assert error["code"] == "validation_error"
    assert any(field.startswith("payload.pipeline.1") for field in error["fields"]), error


def test_arguments_that_break_the_schema_are_refused_before_anything_runs(tools: Any) -> None:
    result = tools("create_task", title="x", schedule_kind="hourly", payload={})

    assert result.is_error
    assert "schedule_kind" in result.content[0].text
    assert not Task.objects.exists()


def test_list_tasks_pages_newest_first(tools: Any) -> None:
    ids = [
        tools.ok("create_task", title=f"t{i}", schedule_kind="manual", payload=echo_pipeline(1))["id"] for i in range(3)
    ]

    first = tools.ok("list_tasks", limit=2)
    rest = tools.ok("list_tasks", limit=2, offset=2)

    assert first["count"] == 3
    assert [task["id"] for task in first["results"]] == [ids[2], ids[1]]
    assert first["next_offset"] == 2
    assert [task["id"] for task in rest["results"]] == [ids[0]]
    assert rest["next_offset"] is None


def test_list_tasks_filters_like_the_api(tools: Any) -> None:
    tools.ok("create_task", title="daily report", payload=echo_pipeline(1), **CRON)
    manual = tools.ok("create_task", title="by hand", schedule_kind="manual", payload=echo_pipeline(1))
    tools.ok("pause_task", task_id=manual["id"])

    assert [t["title"] for t in tools.ok("list_tasks", status="paused")["results"]] == ["by hand"]
    assert [t["title"] for t in tools.ok("list_tasks", schedule_kind="cron")["results"]] == ["daily report"]
    assert [t["title"] for t in tools.ok("list_tasks", search="REPORT")["results"]] == ["daily report"]


def test_get_task_of_an_unknown_id_is_not_found(tools: Any) -> None:
    error = tools.error("get_task", task_id="00000000-0000-0000-0000-000000000000")

    assert error == {"code": "not_found", "message": "Task not found."}


def test_update_task_changes_only_the_given_fields_and_null_clears(tools: Any, agent: Any) -> None:
    created = tools.ok(
        "create_task", title="t", payload=echo_pipeline(1), condition="task.title == 't'", timeout_seconds=30, **CRON
    )

    updated = tools.ok(
        "update_task", task_id=created["id"], changes={"schedule_expr": "30 7 * * 1-5", "condition": None}
    )

    assert updated["schedule_expr"] == "30 7 * * 1-5"
    assert updated["condition"] is None
    assert updated["timeout_seconds"] == 30
    assert updated["title"] == "t"
    assert updated["next_run_at"] != created["next_run_at"]
    assert agent.client.get(f"/tasks/{created['id']}").json() == updated
    assert AuditLog.objects.filter(action="task.update", subject_id=created["id"]).count() == 1


def test_update_task_validates_the_merged_task(tools: Any) -> None:
    created = tools.ok("create_task", title="t", schedule_kind="manual", payload=echo_pipeline(1))

    error = tools.error("update_task", task_id=created["id"], changes={"schedule_kind": "cron"})

    assert error["code"] == "validation_error"
    assert "schedule_expr" in error["fields"]
    assert Task.objects.get(pk=created["id"]).schedule_kind == "manual"


def test_update_task_refuses_unknown_fields(tools: Any) -> None:
    created = tools.ok("create_task", title="t", schedule_kind="manual", payload=echo_pipeline(1))

    result = tools("update_task", task_id=created["id"], changes={"owner": "someone-else"})

    assert result.is_error
    assert "owner" in result.content[0].text


def test_pause_resume_cancel_follow_the_state_machine(tools: Any) -> None:
    task_id = tools.ok("create_task", title="t", payload=echo_pipeline(1), **CRON)["id"]

    assert tools.ok("pause_task", task_id=task_id)["status"] == "paused"
    assert tools.error("pause_task", task_id=task_id)["code"] == "conflict"
    resumed = tools.ok("resume_task", task_id=task_id)
    assert resumed["status"] == "active"
    assert resumed["next_run_at"] is not None
    assert tools.ok("cancel_task", task_id=task_id)["status"] == "canceled"
    assert tools.error("resume_task", task_id=task_id)["code"] == "conflict"
    actions = set(AuditLog.objects.filter(subject_id=task_id).values_list("action", flat=True))
    assert {"task.pause", "task.resume", "task.cancel"} <= actions


def test_snooze_postpones_the_next_run(tools: Any) -> None:
    created = tools.ok("create_task", title="t", payload=echo_pipeline(1), **CRON)

    snoozed = tools.ok("snooze_task", task_id=created["id"], delay_seconds=3600, reason="holiday")

    assert snoozed["snoozed_until"] is not None
    assert snoozed["next_run_at"] == snoozed["snoozed_until"]
    assert snoozed["next_run_at"] > created["next_run_at"]
    error = tools.error("snooze_task", task_id=created["id"])
    assert error["code"] == "validation_error"
    assert "delay_seconds" in error["fields"]


def test_next_runs_and_preview_agree_with_the_api(tools: Any, agent: Any) -> None:
    created = tools.ok("create_task", title="t", payload=echo_pipeline(1), **CRON)

    upcoming = tools.ok("next_runs", task_id=created["id"], count=3)
    preview = tools.ok("preview_schedule", count=3, **CRON)

    assert upcoming == agent.client.get(f"/tasks/{created['id']}/next_runs?count=3").json()
    rest_preview = agent.client.post("/schedules/preview", {**CRON, "count": 3}, format="json").json()
    assert preview == rest_preview
    assert len(preview["occurrences"]) == 3
    assert preview["occurrences"][0]["at"].endswith(("+02:00", "+03:00"))
    assert [o["utc"] for o in upcoming["occurrences"]] == [o["utc"] for o in preview["occurrences"]]


def test_preview_schedule_names_a_bad_timezone(tools: Any) -> None:
    error = tools.error("preview_schedule", schedule_kind="cron", schedule_expr="0 9 * * *", timezone="Mars/Base")

    assert error["code"] == "validation_error"
    assert "timezone" in error["fields"]


def test_run_now_queues_a_manual_run(tools: Any, agent: Any) -> None:
    task_id = tools.ok("create_task", title="t", schedule_kind="manual", payload=echo_pipeline(2))["id"]

    run = tools.ok("run_now", task_id=task_id, params={"who": "mcp"})

    assert run["status"] == "queued"
    assert run["trigger"] == "manual"
    assert run["task"] == task_id
    assert run["context"]["params"] == {"who": "mcp"}
    assert Run.objects.filter(pk=run["id"], task_id=task_id).exists()
    assert AuditLog.objects.get(action="run.create", subject_id=run["id"]).actor_name == agent.agent.name


def test_delete_task_hides_it(tools: Any) -> None:
    task_id = tools.ok("create_task", title="t", schedule_kind="manual", payload=echo_pipeline(1))["id"]

    assert tools.ok("delete_task", task_id=task_id) == {"id": task_id, "deleted": True}

    assert tools.error("get_task", task_id=task_id)["code"] == "not_found"
    assert tools.ok("list_tasks")["count"] == 0
    assert AuditLog.objects.filter(action="task.delete", subject_id=task_id).exists()
