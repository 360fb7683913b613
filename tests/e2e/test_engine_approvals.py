"""Approvals on a real worker: approve a subset, reject, and expiry swept by the sweeper job."""

from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.celery import app
from runs.models import Approval, Run, StepRun
from tests.support.pipelines import DRAFTS, approval_payload, finished, start_manual_run
from tests.support.processes import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def _wait_for_approval(run_id: str) -> Run:
    run = wait_for(lambda: finished(run_id), message="the run to ask for approval")
    assert run.status == "waiting_approval", run.error
    return run


def test_run_waits_then_resumes_with_the_approved_subset(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload())
    run = _wait_for_approval(run_id)
    assert [s.status for s in StepRun.objects.filter(run=run).order_by("index")] == ["succeeded", "running", "pending"]

    response = agent.client.post(
        f"/runs/{run_id}/approve", {"items": [DRAFTS[1]], "comment": "just one"}, format="json"
    )
    assert response.status_code == 200, response.json()

    run = wait_for(lambda: finished(run_id), message="the run to finish")
    assert run.status == "succeeded", run.error
    assert run.result == {"sent": [DRAFTS[1]], "by": agent.agent.name}
    assert run.dispatch_count == 2, "the rest ran on a fresh chain"


def test_reject_skips_the_send_step_that_tests_it_and_the_run_does_not_fail(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload())
    _wait_for_approval(run_id)

    assert agent.client.post(f"/runs/{run_id}/reject", {"comment": "no"}, format="json").status_code == 200

    run = wait_for(lambda: finished(run_id), message="the rest of the pipeline")
    assert (run.status, run.error) == ("succeeded", None)
    send = StepRun.objects.get(run=run, step_id="send")
    assert (send.status, send.skip_reason) == ("skipped", "condition")


def test_reject_of_a_pipeline_that_does_not_test_it_stops_there(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload(guarded=False))
    _wait_for_approval(run_id)

    agent.client.post(f"/runs/{run_id}/reject", format="json")

    run = wait_for(lambda: finished(run_id), message="the run to finish")
    assert (run.status, (run.result or {})["status"]) == ("succeeded", "rejected")
    send = StepRun.objects.get(run=run, step_id="send")
    assert (send.status, send.skip_reason, send.attempts) == ("skipped", "approval_rejected", 0)


def test_expired_approval_is_swept_and_the_if_sees_it(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload(timeout_seconds=0.5))
    _wait_for_approval(run_id)
    expires_at = Approval.objects.get(run_id=run_id).expires_at
    wait_for(lambda: timezone.now() > expires_at, message="the approval to expire")

    # What beat does every ORDINAUT_SWEEP_INTERVAL_S: the sweeper job, on the worker.
    app.send_task("runs.sweep")

    run = wait_for(
        lambda: Run.objects.filter(pk=run_id, status__in=Run.TERMINAL).first(),
        message="the sweeper to expire the approval and the run to finish",
    )
    assert (run.status, run.error) == ("succeeded", None)
    assert Approval.objects.get(run=run).status == "expired"
    assert (StepRun.objects.get(run=run, step_id="ask").output or {})["status"] == "expired"
    assert StepRun.objects.get(run=run, step_id="send").skip_reason == "condition"
