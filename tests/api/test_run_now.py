"""POST /tasks/{id}/run_now: a queued manual run with its pending steps."""

from __future__ import annotations

from typing import Any

import pytest

from runs.models import Run, StepRun
from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def task_id(agent: Any) -> str:
    body = manual_task_body(echo_pipeline(3, params={"city": "Chisinau", "days": 1}))
    return agent.client.post("/tasks", body, format="json").json()["id"]


def test_run_now_returns_202_queued_run(agent: Any, task_id: str, django_capture_on_commit_callbacks: Any) -> None:
    with django_capture_on_commit_callbacks() as callbacks:
        response = agent.client.post(f"/tasks/{task_id}/run_now", {"params": {"days": 3}}, format="json")

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["trigger"] == "manual"
    assert body["context"]["params"] == {"city": "Chisinau", "days": 3}
    run = Run.objects.get(pk=body["id"])
    assert list(StepRun.objects.filter(run=run).values_list("status", flat=True)) == ["pending"] * 3
    assert len(callbacks) == 1, "the chain is sent after commit, once"


def test_run_now_with_bad_params_is_400(agent: Any, task_id: str) -> None:
    response = agent.client.post(f"/tasks/{task_id}/run_now", {"params": [1, 2]}, format="json")
    assert response.status_code == 400
    assert "params" in response.json()["error"]["fields"]
    assert Run.objects.count() == 0


def test_run_now_on_another_agents_task_is_404(make_agent: Any, task_id: str) -> None:
    assert make_agent().client.post(f"/tasks/{task_id}/run_now").status_code == 404
    assert Run.objects.count() == 0


def test_run_now_needs_write_scope(make_agent: Any, agent: Any, task_id: str) -> None:
    reader = make_agent(scopes=["tasks:read"])
    assert reader.client.post(f"/tasks/{task_id}/run_now").status_code == 403


def test_idempotency_key_replays_the_first_run(agent: Any, task_id: str) -> None:
    first = agent.client.post(
        f"/tasks/{task_id}/run_now", {"params": {"days": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1"
    )
    again = agent.client.post(
        f"/tasks/{task_id}/run_now", {"params": {"days": 2}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1"
    )
    other = agent.client.post(
        f"/tasks/{task_id}/run_now", {"params": {"days": 9}}, format="json", HTTP_IDEMPOTENCY_KEY="run-1"
    )
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 409)
    assert again.json()["id"] == first.json()["id"]
    assert Run.objects.count() == 1
