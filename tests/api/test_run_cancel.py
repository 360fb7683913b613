"""POST /runs/{id}/cancel: active runs (queued, running, waiting) end canceled; others are 409."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.celery import app
from ordinaut_site.models import AuditLog
from runs.models import Approval, Run, StepRun
from runs.services import run_create
from tests.support.pipelines import approval_payload, echo_pipeline, make_task, run_in_process

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(agent: Any) -> Run:
    return run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")


def test_cancel_a_queued_run(agent: Any, queued: Run, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = agent.client.post(f"/runs/{queued.pk}/cancel")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "canceled"
    assert body["finished_at"] is not None
    assert [step["status"] for step in body["steps"]] == ["pending", "pending"]
    assert AuditLog.objects.filter(action="run.cancel", subject_id=str(queued.pk)).exists()
    assert callbacks, "the revoke of the stamped chain is sent after commit"


def test_cancel_revokes_the_chain_by_the_stamp_it_was_sent_with(
    agent: Any, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    # The broker and the workers' control channel are recorded, not used.
    sent_headers: list[dict[str, Any]] = []
    revoked: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(
        app.amqp, "send_task_message", lambda producer, name, message, **kw: sent_headers.append(message.headers)
    )
    monkeypatch.setattr(
        app.control, "revoke_by_stamped_headers", lambda headers, **kwargs: revoked.append((headers, kwargs))
    )
    with django_capture_on_commit_callbacks(execute=True):
        run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    (headers,) = sent_headers
    assert headers["stamps"] == {"run_id": str(run.pk)}

    with django_capture_on_commit_callbacks(execute=True):
        response = agent.client.post(f"/runs/{run.pk}/cancel")

    assert response.status_code == 200, response.json()
    assert revoked == [({"run_id": str(run.pk)}, {"terminate": False})]


def test_cancel_a_run_waiting_for_approval(agent: Any) -> None:
    run = run_in_process(agent.agent, approval_payload())
    assert run.status == "waiting_approval"

    body = agent.client.post(f"/runs/{run.pk}/cancel").json()

    assert body["status"] == "canceled"
    assert Approval.objects.get(run=run).status == "canceled"
    ask = StepRun.objects.get(run=run, step_id="ask")
    assert (ask.status, (ask.error or {}).get("code")) == ("failed", "canceled")
    assert StepRun.objects.get(run=run, step_id="send").status == "pending"


def test_cancel_a_finished_run_is_409(agent: Any) -> None:
    run = run_in_process(agent.agent, echo_pipeline(1))
    assert run.status == "succeeded"

    response = agent.client.post(f"/runs/{run.pk}/cancel")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert "succeeded" in response.json()["error"]["message"]
    assert Run.objects.get(pk=run.pk).status == "succeeded"


def test_another_agents_run_is_404(make_agent: Any, queued: Run) -> None:
    assert make_agent().client.post(f"/runs/{queued.pk}/cancel").status_code == 404
    assert make_agent().client.post(f"/runs/{uuid.uuid4()}/cancel").status_code == 404
    assert Run.objects.get(pk=queued.pk).status == "queued"
    assert make_agent(admin=True).client.post(f"/runs/{queued.pk}/cancel").status_code == 200


def test_needs_runs_write_scope(make_agent: Any, agent: Any, queued: Run) -> None:
    reader = make_agent(scopes=["runs:read"])
    response = reader.client.post(f"/runs/{queued.pk}/cancel")
    assert response.status_code == 403
    assert "runs:write" in response.json()["error"]["message"]


def test_anonymous_is_401(queued: Run) -> None:
    assert APIClient().post(f"/runs/{queued.pk}/cancel").status_code == 401
