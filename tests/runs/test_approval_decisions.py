"""An approval's decision is the step's output, not an error: the seed's follow-up pipeline, verbatim.

The seed ends with `send_approved`, guarded by `${steps.approval.status == 'approved'}`: approving
all or some items sends them, a rejection or an expiry skips the send (reason `condition`) and the
run succeeds. A pipeline whose later steps do not test the decision stops after a rejection
(`on_reject`, default `stop`): the rest is skipped, the run ends succeeded with the decision.
"""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.audit import SYSTEM
from pipelines.dryrun import pipeline_dry_run
from pipelines.spec import after_rejection, payload_errors
from runs import services
from runs.models import Approval, Run, StepRun
from runs.services import runs_sweep
from tests.pipelines.seed import EMAIL_FOLLOWUP
from tests.support.pipelines import approval_payload, drive, run_in_process

pytestmark = pytest.mark.django_db

SEND = 3  # the index of send_approved in the seed's pipeline


def _waiting(agent: Any) -> Run:
    run = run_in_process(agent.agent, copy.deepcopy(EMAIL_FOLLOWUP["payload"]))
    assert run.status == Run.Status.WAITING_APPROVAL
    return run


def _finish(run: Run) -> tuple[Run, dict[str, StepRun]]:
    """After the decision: the rest of the pipeline, driven here as the fresh chain would run it."""
    if Run.objects.get(pk=run.pk).status == Run.Status.RUNNING:
        drive(run.pk, start=SEND)
    run.refresh_from_db()
    return run, {step.step_id: step for step in StepRun.objects.filter(run=run)}


def test_the_seed_approved_in_full_sends_every_draft(agent: Any) -> None:
    run = _waiting(agent)

    services.approval_decide(run=run, approve=True, actor=SYSTEM)
    run, steps = _finish(run)

    assert run.status == Run.Status.SUCCEEDED
    assert run.result == {"sent": 2, "threads": ["t1", "t2"]}
    assert steps["request_approval"].output["status"] == "approved"  # type: ignore[index]


def test_the_seed_approved_in_part_sends_exactly_those(agent: Any) -> None:
    run = _waiting(agent)
    second = (Approval.objects.get(run=run).data or [])[1]

    services.approval_decide(run=run, approve=True, items=[second], actor=SYSTEM, comment="only ion")
    run, steps = _finish(run)

    assert run.result == {"sent": 1, "threads": ["t2"]}
    output = steps["request_approval"].output or {}
    assert (output["approved_items"], output["comment"]) == ([second], "only ion")


def test_the_seed_rejected_skips_the_send_by_its_condition_and_does_not_fail(agent: Any) -> None:
    run = _waiting(agent)

    services.approval_decide(run=run, approve=False, actor=SYSTEM, comment="not this week")
    run, steps = _finish(run)

    assert (run.status, run.error) == (Run.Status.SUCCEEDED, None)
    decision = steps["request_approval"]
    assert (decision.status, decision.error) == (StepRun.Status.SUCCEEDED, None)
    output = decision.output or {}
    assert (output["status"], output["approved_items"], output["comment"]) == ("rejected", [], "not this week")
    assert output["decided_by"]["kind"] == "system"
    assert output["decided_at"]
    send = steps["send_approved"]
    assert (send.status, send.skip_reason, send.attempts) == (StepRun.Status.SKIPPED, "condition", 0)


def test_the_seed_expired_is_a_decision_too(agent: Any) -> None:
    run = _waiting(agent)

    assert runs_sweep(now=timezone.now() + timedelta(days=30))["approvals_expired"] == 1
    run, steps = _finish(run)

    assert (run.status, run.error) == (Run.Status.SUCCEEDED, None)
    output = steps["request_approval"].output or {}
    assert (output["status"], output["decided_by"]) == ("expired", None)
    assert (steps["send_approved"].status, steps["send_approved"].skip_reason) == ("skipped", "condition")


# --- on_reject, and what POST /pipelines/validate says about it -----------------------------------


def test_the_seed_tests_its_decision_so_a_rejection_goes_on() -> None:
    pipeline = EMAIL_FOLLOWUP["payload"]["pipeline"]
    assert after_rejection(pipeline, 2) == "continue"
    warnings = pipeline_dry_run(payload=EMAIL_FOLLOWUP["payload"])["warnings"]
    assert not [warning for warning in warnings if "runs even when" in warning["message"]]


def test_an_untested_decision_stops_by_default_and_on_reject_says_otherwise() -> None:
    pipeline = approval_payload(guarded=False)["pipeline"]
    assert after_rejection(pipeline, 1) == "stop"
    assert after_rejection(approval_payload(guarded=False, on_reject="continue")["pipeline"], 1) == "continue"
    assert after_rejection(approval_payload(on_reject="stop")["pipeline"], 1) == "stop"


def test_validate_warns_about_a_step_that_runs_after_a_rejection_without_testing_it() -> None:
    payload = approval_payload()
    payload["pipeline"].append({"id": "log", "uses": "orchestrator.echo", "with": {"note": "done"}})

    warnings = [w for w in pipeline_dry_run(payload=payload)["warnings"] if "runs even when" in w["message"]]

    assert [w["field"] for w in warnings] == ["payload.pipeline.3"]
    assert "'log' runs even when the approval 'ask' is rejected" in warnings[0]["message"]
    payload["pipeline"][1]["on_reject"] = "continue"
    assert not [w for w in pipeline_dry_run(payload=payload)["warnings"] if "runs even when" in w["message"]]


def test_on_reject_is_checked() -> None:
    payload = approval_payload(on_reject="later")
    assert payload_errors(payload)["payload.pipeline.1.on_reject"] == ["step 'ask': must be 'stop' or 'continue'"]
    echo = {"pipeline": [{"id": "a", "uses": "orchestrator.echo", "on_reject": "stop"}]}
    assert "payload.pipeline.0.on_reject" in payload_errors(echo)


def test_a_stopped_run_skips_every_remaining_step(agent: Any) -> None:
    payload = approval_payload(guarded=False)
    payload["pipeline"].append({"id": "log", "uses": "orchestrator.echo", "with": {}})
    run = run_in_process(agent.agent, payload)

    services.approval_decide(run=run, approve=False, actor=SYSTEM)

    run.refresh_from_db()
    assert (run.status, (run.result or {})["status"]) == (Run.Status.SUCCEEDED, "rejected")
    assert [(s.step_id, s.status, s.skip_reason) for s in StepRun.objects.filter(run=run).order_by("index")] == [
        ("draft", "succeeded", ""),
        ("ask", "succeeded", ""),
        ("send", "skipped", "approval_rejected"),
        ("log", "skipped", "approval_rejected"),
    ]
