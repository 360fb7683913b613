"""MCP run tools: list and read runs, cancel, replay, approve and reject, list approvals, validate a pipeline."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.models import AuditLog
from runs.models import Approval, Run, StepRun
from tests.support.pipelines import DRAFTS, approval_payload, echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db

FAILING = {"pipeline": [{"id": "ok", "uses": "orchestrator.echo", "with": {}}, {"id": "boom", "uses": "nowhere.x"}]}


@pytest.fixture
def waiting(agent: Any) -> Run:
    run = run_in_process(agent.agent, approval_payload())
    assert run.status == Run.Status.WAITING_APPROVAL
    return run


def test_get_run_answers_what_get_runs_id_answers(tools: Any, agent: Any) -> None:
    run = run_in_process(agent.agent, echo_pipeline(2))

    body = tools.ok("get_run", run_id=str(run.pk))

    assert body["status"] == "succeeded"
    assert [step["output"] for step in body["steps"]] == [{"i": 0}, {"i": 1}]
    assert body == agent.client.get(f"/runs/{run.pk}").json()


def test_list_runs_filters_by_status_and_task(tools: Any, agent: Any) -> None:
    ok = run_in_process(agent.agent, echo_pipeline(1))
    failed = run_in_process(agent.agent, FAILING)

    only_failed = tools.ok("list_runs", status=["failed", "canceled"])
    of_task = tools.ok("list_runs", task_id=str(ok.task_id))

    assert [run["id"] for run in only_failed["results"]] == [str(failed.pk)]
    assert [run["id"] for run in of_task["results"]] == [str(ok.pk)]
    assert tools.ok("list_runs")["count"] == 2
    assert "steps" not in only_failed["results"][0]


def test_list_runs_refuses_an_empty_time_range(tools: Any) -> None:
    error = tools.error("list_runs", since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z")

    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["until"]


def test_approve_run_resumes_it_with_the_chosen_items(tools: Any, agent: Any, waiting: Run) -> None:
    pending = tools.ok("list_approvals", status=["pending"])
    assert [item["run"] for item in pending["results"]] == [str(waiting.pk)]
    assert pending["results"][0]["data"] == DRAFTS

    body = tools.ok("approve_run", run_id=str(waiting.pk), items=[DRAFTS[1]], comment="only t2")

    assert body["status"] == "running"
    ask = next(step for step in body["steps"] if step["id"] == "ask")
    assert ask["output"]["approved_items"] == [DRAFTS[1]]
    assert ask["output"]["decided_by"] == {"kind": "agent", "id": str(agent.agent.pk), "name": agent.agent.name}
    assert Approval.objects.get(run=waiting).status == "approved"
    row = AuditLog.objects.get(action="approval.approve", subject_id=str(waiting.pk))
    assert row.actor_name == agent.agent.name
    assert tools.ok("list_approvals", status=["pending"])["count"] == 0


def test_approve_run_refuses_items_it_was_not_asked_about(tools: Any, waiting: Run) -> None:
    error = tools.error("approve_run", run_id=str(waiting.pk), items=[{"thread": "t9"}])

    assert error["code"] == "validation_error"
    assert "items.0" in error["fields"]
    assert Approval.objects.get(run=waiting).status == "pending"


def test_reject_run_records_the_decision_as_the_approval_steps_output(tools: Any, waiting: Run) -> None:
    body = tools.ok("reject_run", run_id=str(waiting.pk), comment="not today")

    ask = next(step for step in body["steps"] if step["id"] == "ask")
    assert ask["status"] == "succeeded"
    assert (ask["output"]["status"], ask["output"]["comment"]) == ("rejected", "not today")
    assert body["status"] == "running", "the send step tests the decision: the pipeline goes on"
    assert Approval.objects.get(run=waiting).status == "rejected"
    assert AuditLog.objects.filter(action="approval.reject", subject_id=str(waiting.pk)).exists()
    assert tools.error("reject_run", run_id=str(waiting.pk))["code"] == "conflict"


def test_cancel_run_cancels_a_waiting_run(tools: Any, waiting: Run) -> None:
    body = tools.ok("cancel_run", run_id=str(waiting.pk))

    assert body["status"] == "canceled"
    assert Approval.objects.get(run=waiting).status == "canceled"
    assert tools.error("cancel_run", run_id=str(waiting.pk))["code"] == "conflict"


def test_replay_run_from_the_start_queues_a_new_run(tools: Any, agent: Any) -> None:
    failed = run_in_process(agent.agent, FAILING)

    replay = tools.ok("replay_run", run_id=str(failed.pk), start_from="start")

    assert replay["status"] == "queued"
    assert replay["trigger"] == "replay"
    assert replay["replay_of"] == str(failed.pk)
    assert StepRun.objects.filter(run_id=replay["id"], status="pending").count() == 2
    assert tools.error("replay_run", run_id=replay["id"])["code"] == "conflict"


def test_validate_pipeline_reports_what_the_api_reports(tools: Any, agent: Any) -> None:
    payload = {
        "params": {"who": "world"},
        "pipeline": [
            {"id": "greet", "uses": "orchestrator.echo", "with": {"text": "hi ${params.who}"}},
            {"id": "send", "uses": "mail.send_nowhere", "with": {"body": "${steps.greet.text}"}},
        ],
    }

    report = tools.ok("validate_pipeline", payload=payload, step_outputs={"greet": {"text": "hi world"}})

    assert report["valid"] is False
    assert report["steps"][0]["rendered_input"] == {"text": "hi world"}
    assert report["steps"][1]["rendered_input"] == {"body": "hi world"}
    assert [error["field"] for error in report["errors"]] == ["payload.pipeline.1.uses"]
    rest = agent.client.post(
        "/pipelines/validate", {"payload": payload, "step_outputs": {"greet": {"text": "hi world"}}}, format="json"
    )
    assert report == rest.json()
    assert tools.ok("validate_pipeline", payload=echo_pipeline(2))["valid"] is True


def test_validate_pipeline_applies_the_apis_json_limits(tools: Any, settings: Any) -> None:
    settings.ORDINAUT_MAX_JSON_DEPTH = 5
    deep: Any = "x"
    for _ in range(6):
        deep = [deep]

    error = tools.error("validate_pipeline", payload={"params": {"deep": deep}, "pipeline": []})

    assert error["code"] == "validation_error"
    assert "ORDINAUT_MAX_JSON_DEPTH" in error["message"]
