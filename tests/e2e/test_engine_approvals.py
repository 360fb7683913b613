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


def test_reject_fails_the_run_and_the_send_step_never_runs(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload())
    _wait_for_approval(run_id)

    assert agent.client.post(f"/runs/{run_id}/reject", {"comment": "no"}, format="json").status_code == 200

    run = Run.objects.get(pk=run_id)
    assert (run.status, (run.error or {})["code"]) == ("failed", "approval_rejected")
    assert StepRun.objects.get(run=run, step_id="send").status == "pending"


def test_reject_with_on_error_continue_skips_the_guarded_step(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload(on_error="continue"))
    _wait_for_approval(run_id)

    agent.client.post(f"/runs/{run_id}/reject", format="json")

    run = wait_for(lambda: finished(run_id), message="the run to finish")
    assert run.status == "succeeded"
    assert StepRun.objects.get(run=run, step_id="send").status == "skipped"


def test_expired_approval_is_swept_and_fails_the_run(agent: Any, worker: Any) -> None:
    run_id = start_manual_run(agent.client, approval_payload(timeout_seconds=0.5))
    _wait_for_approval(run_id)
    expires_at = Approval.objects.get(run_id=run_id).expires_at
    wait_for(lambda: timezone.now() > expires_at, message="the approval to expire")

    # What beat does every ORDINAUT_SWEEP_INTERVAL_S: the sweeper job, on the worker.
    app.send_task("runs.sweep")

    run = wait_for(
        lambda: Run.objects.filter(pk=run_id).exclude(status="waiting_approval").first(),
        message="the sweeper to expire the approval",
    )
    assert run.status == "failed"
    assert (run.error or {})["code"] == "approval_expired"
    assert Approval.objects.get(run=run).status == "expired"
