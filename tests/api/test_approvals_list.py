"""GET /approvals: what the caller's runs wait for (and what was decided), newest first."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run
from tests.support.pipelines import DRAFTS, approval_payload, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting(agent: Any) -> Run:
    return run_in_process(agent.agent, approval_payload())


def test_lists_pending_approvals_with_what_to_decide(agent: Any, waiting: Run) -> None:
    response = agent.client.get("/approvals?status=pending")

    assert response.status_code == 200
    (approval,) = response.json()["results"]
    assert approval["run"] == str(waiting.pk)
    assert approval["step_id"] == "ask"
    assert approval["message"] == "Send 3 follow-ups?"
    assert approval["data"] == DRAFTS
    assert approval["status"] == "pending"
    assert approval["expires_at"] is not None
    assert agent.client.get(f"/approvals/{approval['id']}").json()["id"] == approval["id"]


def test_status_filter(agent: Any, waiting: Run) -> None:
    decided = run_in_process(agent.agent, approval_payload())
    agent.client.post(f"/runs/{decided.pk}/reject", format="json")

    assert [a["run"] for a in agent.client.get("/approvals?status=rejected").json()["results"]] == [str(decided.pk)]
    assert [a["run"] for a in agent.client.get("/approvals?status=pending").json()["results"]] == [str(waiting.pk)]
    assert agent.client.get("/approvals").json()["count"] == 2


def test_bad_status_is_400(agent: Any) -> None:
    response = agent.client.get("/approvals?status=maybe")
    assert response.status_code == 400
    assert "status" in response.json()["error"]["fields"]


def test_other_agents_approvals_are_hidden(make_agent: Any, waiting: Run) -> None:
    other = make_agent()
    assert other.client.get("/approvals").json()["count"] == 0
    approval_id = waiting.approvals.get().pk
    assert other.client.get(f"/approvals/{approval_id}").status_code == 404
    assert make_agent(admin=True).client.get("/approvals").json()["count"] >= 1


def test_needs_runs_read_scope(make_agent: Any) -> None:
    assert make_agent(scopes=["tasks:read"]).client.get("/approvals").status_code == 403


def test_anonymous_is_401() -> None:
    assert APIClient().get("/approvals").status_code == 401
