"""Admin actions on runs and approvals call the same services as the API, audited as the operator."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ordinaut_site.models import AuditLog
from runs.models import Approval, Run, StepRun
from runs.services import run_create
from tests.support.pipelines import DRAFTS, approval_payload, echo_pipeline, make_task, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    user = User.objects.create_superuser("operator", "op@example.com", "pw-not-used")
    client = Client()
    client.force_login(user)
    return client


def test_approve_action_resumes_the_run_with_all_items(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    response = operator.post(
        "/admin/runs/approval/", {"action": "approve_all_items", "_selected_action": [str(approval.pk)]}
    )

    assert response.status_code == 302
    assert Run.objects.get(pk=run.pk).status == "running"
    output = StepRun.objects.get(run=run, step_id="ask").output or {}
    assert output["approved_items"] == DRAFTS
    assert output["decided_by"]["kind"] == "user"
    assert AuditLog.objects.filter(action="approval.approve", actor_kind="user", actor_name="operator").exists()


def test_reject_action_records_the_decision_and_stops_an_unguarded_pipeline(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload(guarded=False))
    approval = Approval.objects.get(run=run)

    operator.post("/admin/runs/approval/", {"action": "reject", "_selected_action": [str(approval.pk)]})

    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert Approval.objects.get(pk=approval.pk).status == "rejected"
    assert StepRun.objects.get(run=run, step_id="send").skip_reason == "approval_rejected"


def test_cancel_action_cancels_active_runs_and_reports_finished_ones(agent: Any, operator: Client) -> None:
    active = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    done = run_in_process(agent.agent, echo_pipeline(1))

    response = operator.post(
        "/admin/runs/run/",
        {"action": "cancel_runs", "_selected_action": [str(active.pk), str(done.pk)]},
        follow=True,
    )

    assert Run.objects.get(pk=active.pk).status == "canceled"
    assert Run.objects.get(pk=done.pk).status == "succeeded"
    assert "succeeded" in response.content.decode()


def test_run_page_shows_the_step_timeline(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    page = operator.get(f"/admin/runs/run/{run.pk}/change/")
    assert page.status_code == 200
    assert "request_approval" in page.content.decode()


def _approve_chosen(operator: Client, approval: Approval, **fields: Any) -> Any:
    return operator.post(
        "/admin/runs/approval/",
        {"action": "approve_chosen_items", "_selected_action": [str(approval.pk)], **fields},
    )


def test_approve_chosen_items_asks_first_with_every_item_ticked(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    page = _approve_chosen(operator, approval)

    assert page.status_code == 200
    html = page.content.decode()
    assert html.count(f'name="items_{approval.pk}"') == len(DRAFTS)
    assert html.count(" checked>") == len(DRAFTS)
    assert "Send 3 follow-ups?" in html
    assert "hello" in html, "each item is shown"
    assert Run.objects.get(pk=run.pk).status == "waiting_approval", "nothing decided yet"


def test_approving_the_ticked_items_with_a_comment_resumes_the_run_with_only_those(
    agent: Any, operator: Client
) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    response = _approve_chosen(operator, approval, post="yes", **{f"items_{approval.pk}": ["0", "2"]}, comment="not t2")

    assert response.status_code == 302
    assert Run.objects.get(pk=run.pk).status == "running"
    approval.refresh_from_db()
    assert (approval.status, approval.approved_items, approval.comment) == (
        "approved",
        [DRAFTS[0], DRAFTS[2]],
        "not t2",
    )
    output = StepRun.objects.get(run=run, step_id="ask").output or {}
    assert (output["approved_items"], output["comment"]) == ([DRAFTS[0], DRAFTS[2]], "not t2")
    assert (output["decided_by"]["kind"], output["decided_by"]["name"]) == ("user", "operator")
    audit = AuditLog.objects.get(action="approval.approve", subject_id=str(run.pk))
    assert (audit.actor_kind, audit.actor_name) == ("user", "operator")
    assert (audit.details["approved_items"], audit.details["comment"]) == (2, "not t2")


def test_an_item_the_approval_did_not_offer_is_refused_and_nothing_is_decided(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    response = _approve_chosen(operator, approval, post="yes", **{f"items_{approval.pk}": ["0", "7"]})

    assert response.status_code == 302
    assert Approval.objects.get(pk=approval.pk).status == "pending"
    assert "is not one of the items" in operator.get("/admin/runs/approval/").content.decode()


def test_a_too_long_comment_shows_the_page_again_with_the_ticks_kept(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    page = _approve_chosen(operator, approval, post="yes", **{f"items_{approval.pk}": ["1"]}, comment="x" * 2001)

    assert page.status_code == 200
    assert "at most 2000 characters" in page.content.decode()
    assert page.content.decode().count(" checked>") == 1
    assert Approval.objects.get(pk=approval.pk).status == "pending"


def test_the_message_counts_the_approval_and_the_items_it_approved(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())  # one approval of three items
    approval = Approval.objects.get(run=run)

    response = operator.post(
        "/admin/runs/approval/",
        {"action": "approve_all_items", "_selected_action": [str(approval.pk)]},
        follow=True,
    )

    assert [str(message) for message in response.context["messages"]] == ["Approved 1 approval with 3 items."]


def test_approving_two_of_three_items_says_two_items(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload())
    approval = Approval.objects.get(run=run)

    response = operator.post(
        "/admin/runs/approval/",
        {
            "action": "approve_chosen_items",
            "_selected_action": [str(approval.pk)],
            "post": "yes",
            f"items_{approval.pk}": ["0", "2"],
        },
        follow=True,
    )

    shown = [str(message) for message in response.context["messages"]]
    assert shown == ["Approved 1 approval with 2 items (1 item not chosen)."]


def test_rejecting_says_how_many_approvals_were_rejected(agent: Any, operator: Client) -> None:
    runs = [run_in_process(agent.agent, approval_payload(guarded=False)) for _ in range(2)]
    selected = [str(approval.pk) for approval in Approval.objects.filter(run__in=runs)]

    response = operator.post("/admin/runs/approval/", {"action": "reject", "_selected_action": selected}, follow=True)

    assert [str(message) for message in response.context["messages"]] == ["Rejected 2 approvals."]


def test_the_task_page_links_to_the_runs_of_that_task_only(agent: Any, operator: Client) -> None:
    mine = run_in_process(agent.agent, echo_pipeline(1))
    other = run_in_process(agent.agent, echo_pipeline(1))

    page = operator.get(f"/admin/tasks/task/{mine.task_id}/change/")
    assert page.status_code == 200
    link = f"/admin/runs/run/?task__id__exact={mine.task_id}"
    assert link in page.content.decode()

    listed = operator.get(link)
    assert listed.status_code == 200
    body = listed.content.decode()
    assert str(mine.pk) in body
    assert str(other.pk) not in body


def test_reject_with_a_comment_records_the_comment(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload(guarded=False))
    approval = Approval.objects.get(run=run)
    selected = {"action": "reject_with_comment", "_selected_action": [str(approval.pk)]}

    page = operator.post("/admin/runs/approval/", selected)
    assert page.status_code == 200
    assert "Comment (optional)" in page.content.decode()
    assert Approval.objects.get(pk=approval.pk).status == "pending", "the page alone decides nothing"

    operator.post("/admin/runs/approval/", {**selected, "post": "yes", "comment": "wrong recipients"})

    approval.refresh_from_db()
    assert (approval.status, approval.comment) == ("rejected", "wrong recipients")
    output = StepRun.objects.get(run=run, step_id="ask").output or {}
    assert (output["status"], output["comment"]) == ("rejected", "wrong recipients")
    assert AuditLog.objects.filter(action="approval.reject", actor_name="operator").exists()


@pytest.mark.parametrize("model", ["run", "approval"])
def test_record_pages_are_read_only_without_save_buttons(agent: Any, operator: Client, model: str) -> None:
    run = run_in_process(agent.agent, approval_payload())
    pk = run.pk if model == "run" else Approval.objects.get(run=run).pk

    page = operator.get(f"/admin/runs/{model}/{pk}/change/")

    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()
    assert operator.post(f"/admin/runs/{model}/{pk}/change/", {}).status_code == 403


def test_the_approvals_list_names_the_task_and_leads_with_it(agent: Any, operator: Client) -> None:
    run = run_in_process(agent.agent, approval_payload(), title="Weekly follow-ups")

    page = operator.get("/admin/runs/approval/")

    body = page.content.decode()
    assert page.status_code == 200
    assert "Weekly follow-ups" in body
    assert body.index("Weekly follow-ups") < body.index("Send 3 follow-ups?")
    assert f"/admin/runs/run/{run.pk}/change/" in body
