"""POST /runs/{id}/reject: a rejection is a decision, not an error: the approval step succeeds with it as
its output, a later `if` sees it, and `on_reject` (stop unless a later step tests it) decides the rest."""

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


def test_reject_is_a_decision_the_run_goes_on_to_the_step_that_tests_it(agent: Any, waiting: Run) -> None:
    response = agent.client.post(f"/runs/{waiting.pk}/reject", {"comment": "not now"}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "running", "the send step's `if` tests the decision: the pipeline goes on"
    assert body["error"] is None
    ask = StepRun.objects.get(run=waiting, step_id="ask")
    assert ask.status == "succeeded"
    assert ask.error is None
    output = ask.output or {}
    assert (output["status"], output["approved_items"], output["comment"]) == ("rejected", [], "not now")
    assert output["decided_by"]["name"] == agent.agent.name
    assert output["decided_at"]
    assert Approval.objects.get(run=waiting).status == "rejected"
    assert AuditLog.objects.filter(action="approval.reject", subject_id=str(waiting.pk)).exists()


def _payload_without_a_test(on_reject: str | None = None) -> dict[str, Any]:
    return approval_payload(guarded=False, on_reject=on_reject)


@pytest.mark.parametrize("on_reject", [None, "stop"])
def test_with_no_step_testing_the_decision_a_rejection_stops_the_run_not_failed(
    agent: Any, on_reject: str | None
) -> None:
    run = run_in_process(agent.agent, _payload_without_a_test(on_reject))

    body = agent.client.post(f"/runs/{run.pk}/reject", {"comment": "no"}, format="json").json()

    assert body["status"] == "succeeded"
    assert body["error"] is None
    assert body["result"]["status"] == "rejected"
    send = StepRun.objects.get(run=run, step_id="send")
    assert (send.status, send.skip_reason) == ("skipped", "approval_rejected")
    detail = agent.client.get(f"/runs/{run.pk}").json()
    assert [(step["id"], step["status"], step["skip_reason"]) for step in detail["steps"]] == [
        ("draft", "succeeded", ""),
        ("ask", "succeeded", ""),
        ("send", "skipped", "approval_rejected"),
    ]


def test_on_reject_continue_runs_the_rest_even_untested(agent: Any) -> None:
    run = run_in_process(agent.agent, _payload_without_a_test("continue"))

    body = agent.client.post(f"/runs/{run.pk}/reject", format="json").json()

    assert body["status"] == "running"
    assert Run.objects.get(pk=run.pk).current_step == 2


def test_an_approval_still_runs_the_rest_when_nothing_tests_it(agent: Any) -> None:
    run = run_in_process(agent.agent, _payload_without_a_test())

    body = agent.client.post(f"/runs/{run.pk}/approve", format="json").json()

    assert body["status"] == "running"


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
