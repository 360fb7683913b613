"""POST /pipelines/validate: the dry-run report; a bad payload is a report, a bad request a 400."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.pipelines.seed import EMAIL_FOLLOWUP, MORNING_BRIEFING

pytestmark = pytest.mark.django_db


def test_seed_morning_briefing_is_valid(agent: Any) -> None:
    response = agent.client.post(
        "/pipelines/validate",
        {
            "payload": MORNING_BRIEFING["payload"],
            "timezone": "Europe/Chisinau",
            "now": "2026-03-27T06:30:00Z",
            "step_outputs": {"calendar": {"events": []}, "weather": {"summary": "rain"}, "summarize": {"text": "ok"}},
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["valid"] is True, body["errors"]
    assert [step["id"] for step in body["steps"]] == ["calendar", "weather", "summarize", "notify"]
    assert body["steps"][0]["rendered_input"]["end"] == "2026-03-28T08:30:00+02:00"
    for key in ("id", "uses", "tool_found", "rendered_input", "input_errors", "if_result"):
        assert key in body["steps"][0]


def test_seed_email_followup_reports_its_if(agent: Any) -> None:
    drafts = {"count": 1, "messages": [{"thread": "t1", "text": "hi"}]}
    body = agent.client.post(
        "/pipelines/validate",
        {
            "payload": EMAIL_FOLLOWUP["payload"],
            "step_outputs": {
                "scan_outbox": {"threads": [{"id": "t1"}]},
                "generate_followups": drafts,
                "request_approval": {"status": "expired", "approved_items": []},
            },
        },
        format="json",
    ).json()
    assert body["valid"] is True, body["errors"]
    assert body["steps"][3]["if_result"] is False


def test_problems_are_reported_not_refused(agent: Any) -> None:
    body = agent.client.post(
        "/pipelines/validate",
        {"payload": {"pipeline": [{"id": "x", "uses": "nowhere.tool", "with": {"a": "${params.b}"}}]}},
        format="json",
    ).json()
    assert body["valid"] is False
    assert body["errors"][0]["field"] == "payload.pipeline.0.uses"
    assert body["warnings"][0]["message"] == "step 'x': ${params.b} renders null"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "payload"),
        ({"payload": {"pipeline": []}, "params": [1]}, "params"),
        ({"payload": {"pipeline": []}, "step_outputs": "x"}, "step_outputs"),
        ({"payload": {"pipeline": []}, "timezone": "Mars/Base"}, "timezone"),
        ({"payload": {"pipeline": []}, "now": "soon"}, "now"),
    ],
)
def test_malformed_requests_are_400(agent: Any, body: dict[str, Any], field: str) -> None:
    response = agent.client.post("/pipelines/validate", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_needs_tasks_read_scope(make_agent: Any) -> None:
    response = make_agent(scopes=["runs:read"]).client.post(
        "/pipelines/validate", {"payload": {"pipeline": []}}, format="json"
    )
    assert response.status_code == 403


def test_anonymous_is_401() -> None:
    assert APIClient().post("/pipelines/validate", {"payload": {}}, format="json").status_code == 401
