"""POST /runs/{id}/replay: a new run of a failed or canceled run, from its failed step or the start."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Run, StepRun
from tests.support.pipelines import echo_pipeline, run_in_process

pytestmark = pytest.mark.django_db

FAILING = {
    "params": {"n": 1},
    "pipeline": [
        {"id": "a", "uses": "orchestrator.echo", "with": {"n": "${params.n}"}},
        {"id": "b", "uses": "orchestrator.echo", "with": {"from_a": "${steps.a.n}"}},
        {"id": "broken", "uses": "nowhere.tool"},
        {"id": "after", "uses": "orchestrator.echo"},
    ],
}


@pytest.fixture
def failed(agent: Any) -> Run:
    run = run_in_process(agent.agent, FAILING)
    assert run.status == "failed"
    return run


def test_replay_from_the_failed_step_reuses_earlier_outputs(agent: Any, failed: Run) -> None:
    response = agent.client.post(f"/runs/{failed.pk}/replay", {"from": "failed_step"}, format="json")

    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["trigger"], body["replay_of"], body["status"]) == ("replay", str(failed.pk), "queued")
    assert body["trigger_key"] == f"replay:{failed.pk}:1"
    assert body["context"]["params"] == failed.context["params"]
    steps = {s.step_id: s for s in StepRun.objects.filter(run_id=body["id"])}
    assert (steps["a"].status, steps["a"].output, steps["a"].attempts) == ("succeeded", {"n": 1}, 0)
    assert steps["b"].output == {"from_a": 1}
    assert steps["a"].attempt_history == [{"outcome": "reused", "from_run": str(failed.pk)}]
    assert (steps["broken"].status, steps["after"].status) == ("pending", "pending")
    assert Run.objects.get(pk=body["id"]).current_step == 2


def test_replay_from_start_and_numbering(agent: Any, failed: Run) -> None:
    first = agent.client.post(f"/runs/{failed.pk}/replay", {"from": "start"}, format="json").json()
    second = agent.client.post(f"/runs/{failed.pk}/replay", format="json").json()

    assert {s.status for s in StepRun.objects.filter(run_id=first["id"])} == {"pending"}
    assert (first["trigger_key"], second["trigger_key"]) == (f"replay:{failed.pk}:1", f"replay:{failed.pk}:2")


def test_bad_from_is_400(agent: Any, failed: Run) -> None:
    response = agent.client.post(f"/runs/{failed.pk}/replay", {"from": "middle"}, format="json")
    assert response.status_code == 400
    assert "from" in response.json()["error"]["fields"]


def test_a_succeeded_run_is_409(agent: Any) -> None:
    run = run_in_process(agent.agent, echo_pipeline(1))
    response = agent.client.post(f"/runs/{run.pk}/replay", {"from": "start"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_a_pipeline_changed_before_the_failed_step_is_409_but_start_works(agent: Any, failed: Run) -> None:
    task = failed.task
    task.payload = {**task.payload, "pipeline": [{"id": "z", "uses": "orchestrator.echo"}, *task.pipeline[1:]]}
    task.save()
    response = agent.client.post(f"/runs/{failed.pk}/replay", {"from": "failed_step"}, format="json")
    assert response.status_code == 409
    assert "replay from start" in response.json()["error"]["message"]
    assert agent.client.post(f"/runs/{failed.pk}/replay", {"from": "start"}, format="json").status_code == 202


def test_another_agents_run_is_404(make_agent: Any, failed: Run) -> None:
    assert make_agent().client.post(f"/runs/{failed.pk}/replay", format="json").status_code == 404


def test_needs_runs_write_scope(make_agent: Any, failed: Run) -> None:
    assert make_agent(scopes=["runs:read"]).client.post(f"/runs/{failed.pk}/replay").status_code == 403


def test_anonymous_is_401(failed: Run) -> None:
    assert APIClient().post(f"/runs/{failed.pk}/replay").status_code == 401
