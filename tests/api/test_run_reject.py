"""POST /runs/{id}/reject: the approval step fails with the decision; on_error decides the run."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.models import AuditLog
from runs.models import Approval, Run, StepRun
from tests.support.pipelines import approval_payload, echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(agent: Any) -> Run:
    run = run_in_process(agent.agent, approval_payload())
    assert run.status == "waiting_approval"
    return run


def test_reject_fails_the_run_by_default(agent: Any, waiting: Run) -> None:
    response = agent.client.post(f"/runs/{waiting.pk}/reject", {"comment": "not now"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "approval_rejected"
    assert body["error"]["step_id"] == "ask"
    ask = StepRun.objects.get(run=waiting, step_id="ask")
    assert ask.status == "failed"
    assert (ask.output or {})["status"] == "rejected"
    assert (ask.output or {})["comment"] == "not now"
    assert Approval.objects.get(run=waiting).status == "rejected"
    assert AuditLog.objects.filter(action="approval.reject", subject_id=str(waiting.pk)).exists()


def test_reject_with_on_error_continue_resumes_so_the_if_can_react(agent: Any) -> None:
    run = run_in_process(agent.agent, approval_payload(on_error="continue"))

    body = agent.client.post(f"/runs/{run.pk}/reject", format="json").json()

    assert body["status"] == "running"
    assert Run.objects.get(pk=run.pk).current_step == 2


def test_reject_takes_no_items(agent: Any, waiting: Run) -> None:
    response = agent.client.post(f"/runs/{waiting.pk}/reject", {"comment": "x" * 3000}, format="json")
    assert response.status_code == 400
    assert "comment" in response.json()["error"]["fields"]


def test_a_run_not_waiting_is_409(agent: Any) -> None:
    run = run_in_process(agent.agent, echo_pipeline(1))
    assert agent.client.post(f"/runs/{run.pk}/reject").status_code == 409


def test_another_agents_run_is_404(make_agent: Any, waiting: Run) -> None:
    assert make_agent().client.post(f"/runs/{waiting.pk}/reject").status_code == 404


def test_needs_runs_write_scope(make_agent: Any, waiting: Run) -> None:
    assert make_agent(scopes=["runs:read"]).client.post(f"/runs/{waiting.pk}/reject").status_code == 403


def test_anonymous_is_401(waiting: Run) -> None:
    assert APIClient().post(f"/runs/{waiting.pk}/reject").status_code == 401
