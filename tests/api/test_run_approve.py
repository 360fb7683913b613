"""POST /runs/{id}/approve: a waiting run resumes with the approved items (all, or a subset)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.models import AuditLog
from runs.models import Approval, Run, StepRun
from tests.support.pipelines import DRAFTS, approval_payload, echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(agent: Any) -> Run:
    run = run_in_process(agent.agent, approval_payload())
    assert run.status == "waiting_approval"
    return run


def test_approve_a_subset_resumes_the_run(agent: Any, waiting: Run, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = agent.client.post(
            f"/runs/{waiting.pk}/approve", {"items": [DRAFTS[2], DRAFTS[0]], "comment": "two of three"}, format="json"
        )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "running"
    ask = next(step for step in body["steps"] if step["id"] == "ask")
    assert ask["status"] == "succeeded"
    assert ask["output"].pop("decided_at")
    assert ask["output"] == {
        "status": "approved",
        "approved_items": [DRAFTS[2], DRAFTS[0]],
        "decided_by": {"kind": "agent", "id": str(agent.agent.pk), "name": agent.agent.name},
        "comment": "two of three",
    }
    assert body["approvals"][0]["status"] == "approved"
    assert len(callbacks) == 1, "the rest of the pipeline is dispatched on a fresh chain after commit"
    assert AuditLog.objects.filter(action="approval.approve", subject_id=str(waiting.pk)).exists()


def test_approve_without_items_approves_all_of_them(agent: Any, waiting: Run) -> None:
    agent.client.post(f"/runs/{waiting.pk}/approve", format="json")
    assert StepRun.objects.get(run=waiting, step_id="ask").output["approved_items"] == DRAFTS  # type: ignore[index]


def test_items_not_asked_about_are_400(agent: Any, waiting: Run) -> None:
    response = agent.client.post(f"/runs/{waiting.pk}/approve", {"items": [{"thread": "t9"}]}, format="json")
    assert response.status_code == 400
    assert "items.0" in response.json()["error"]["fields"]
    assert Approval.objects.get(run=waiting).status == "pending"


def test_bad_body_is_400(agent: Any, waiting: Run) -> None:
    response = agent.client.post(f"/runs/{waiting.pk}/approve", {"items": "all", "comment": 5}, format="json")
    assert response.status_code == 400
    assert "items" in response.json()["error"]["fields"]


def test_a_run_not_waiting_is_409(agent: Any) -> None:
    run = run_in_process(agent.agent, echo_pipeline(1))
    response = agent.client.post(f"/runs/{run.pk}/approve", format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_deciding_twice_is_409(agent: Any, waiting: Run) -> None:
    assert agent.client.post(f"/runs/{waiting.pk}/approve", format="json").status_code == 200
    assert agent.client.post(f"/runs/{waiting.pk}/approve", format="json").status_code == 409


def test_another_agents_run_is_404(make_agent: Any, waiting: Run) -> None:
    assert make_agent().client.post(f"/runs/{waiting.pk}/approve", format="json").status_code == 404
    assert Approval.objects.get(run=waiting).status == "pending"


def test_needs_runs_write_scope(make_agent: Any, waiting: Run) -> None:
    assert make_agent(scopes=["runs:read"]).client.post(f"/runs/{waiting.pk}/approve").status_code == 403


def test_anonymous_is_401(waiting: Run) -> None:
    assert APIClient().post(f"/runs/{waiting.pk}/approve").status_code == 401
