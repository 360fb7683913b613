"""Dry-run: each class of problem is reported, nothing is called, the seed's payloads validate."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.dryrun import pipeline_dry_run
from pipelines.tools import PYTHON_TOOLS, tool_register
from tests.pipelines.seed import EMAIL_FOLLOWUP, MORNING_BRIEFING

FRIDAY_0830_CHISINAU = datetime(2026, 3, 27, 6, 30, tzinfo=UTC)


@pytest.fixture
def spy() -> Any:
    """A tool that records calls: dry-run must never add one."""
    calls: list[Any] = []

    @tool_register("testing.spy", description="records calls", input_schema={"type": "object"})
    def record(payload: Any, call: Any) -> Any:
        calls.append(payload)
        return payload

    yield calls
    PYTHON_TOOLS.unregister("testing.spy")


def _step(report: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(step for step in report["steps"] if step["id"] == step_id)


def test_morning_briefing_validates_with_its_tools_registered_as_doubles() -> None:
    report = pipeline_dry_run(
        payload=MORNING_BRIEFING["payload"],
        timezone_name="Europe/Chisinau",
        now=FRIDAY_0830_CHISINAU,
        step_outputs={
            "calendar": {"events": [{"title": "Standup"}]},
            "weather": {"summary": "sunny"},
            "summarize": {"text": "1 event; sunny."},
        },
    )
    assert report["valid"] is True, report["errors"]
    assert report["errors"] == []
    assert report["warnings"] == []
    assert _step(report, "calendar")["rendered_input"] == {
        "start": "2026-03-27T08:30:00+02:00",
        "end": "2026-03-28T08:30:00+02:00",
    }
    assert _step(report, "summarize")["rendered_input"]["calendar"] == {"events": [{"title": "Standup"}]}
    assert _step(report, "notify")["rendered_input"] == {"chat_id": 12345, "text": "1 event; sunny."}
    assert all(step["tool_found"] for step in report["steps"])


def test_email_followup_validates_and_reports_the_if_decision() -> None:
    messages = [{"thread": "t1", "text": "hi"}, {"thread": "t2", "text": "hello"}]
    drafts = {"count": 2, "messages": messages}
    outputs: dict[str, Any] = {
        "scan_outbox": {"threads": [{"id": "t1"}, {"id": "t2"}]},
        "generate_followups": drafts,
        "request_approval": {"status": "approved", "approved_items": messages[:1]},
    }
    report = pipeline_dry_run(payload=EMAIL_FOLLOWUP["payload"], step_outputs=outputs)
    assert report["valid"] is True, report["errors"]
    approval = _step(report, "request_approval")
    assert approval["rendered_input"] == {"message": "Review 2 follow-up emails", "data": messages}
    send = _step(report, "send_approved")
    assert (send["if_result"], send["would_run"]) == (True, True)
    assert send["rendered_input"] == {"drafts": messages[:1]}

    rejected = {**outputs, "request_approval": {"status": "rejected", "approved_items": []}}
    report = pipeline_dry_run(payload=EMAIL_FOLLOWUP["payload"], step_outputs=rejected)
    assert (_step(report, "send_approved")["if_result"], _step(report, "send_approved")["would_run"]) == (False, False)


def test_structural_errors_stop_nothing_else_from_being_reported() -> None:
    report = pipeline_dry_run(payload={"pipeline": [{"id": "a", "uses": "orchestrator.echo", "bogus": 1}]})
    assert report["valid"] is False
    assert report["errors"][0]["field"] == "payload.pipeline.0.bogus"
    assert _step(report, "a")["tool_found"] is True


@pytest.mark.django_db  # an unknown name is also looked for in the MCP catalog
def test_unknown_tools_are_errors() -> None:
    report = pipeline_dry_run(payload={"pipeline": [{"id": "x", "uses": "nowhere.tool"}]})
    assert report["valid"] is False
    assert report["errors"] == [
        {"field": "payload.pipeline.0.uses", "message": "step 'x': no tool named 'nowhere.tool' is registered"}
    ]
    assert _step(report, "x")["tool_found"] is False


def test_input_schema_violations_of_rendered_inputs_are_errors() -> None:
    payload = {
        "params": {"city": 42},
        "pipeline": [{"id": "w", "uses": "weather-mcp.forecast", "with": {"city": "${params.city}"}}],
    }
    report = pipeline_dry_run(payload=payload)
    assert report["valid"] is False
    assert _step(report, "w")["rendered_input"] == {"city": 42}
    assert _step(report, "w")["input_errors"] == ["with.city: 42 is not of type 'string'"]
    assert report["errors"][0]["field"] == "payload.pipeline.0.with"
    assert pipeline_dry_run(payload=payload, params={"city": "Iasi"})["valid"] is True


def test_unresolved_template_paths_are_warnings() -> None:
    payload = {
        "pipeline": [
            {"id": "a", "uses": "orchestrator.echo"},
            {"id": "b", "uses": "orchestrator.echo", "with": {"x": "${steps.a.value}", "y": "${params.nope}"}},
        ]
    }
    report = pipeline_dry_run(payload=payload)
    assert report["valid"] is True
    assert _step(report, "b")["unresolved_paths"] == ["params.nope", "steps.a.value"]
    assert [w["message"] for w in report["warnings"]] == [
        "step 'b': ${params.nope} renders null",
        "step 'b': ${steps.a.value} renders null",
    ]
    report = pipeline_dry_run(payload=payload, step_outputs={"a": {"value": 1}}, params={"nope": 2})
    assert report["warnings"] == []
    assert _step(report, "b")["rendered_input"] == {"x": 1, "y": 2}


def test_each_if_decision_is_reported_and_a_skipped_step_outputs_null() -> None:
    payload = {
        "params": {"zero": 0},
        "pipeline": [
            {"id": "always", "uses": "orchestrator.echo", "if": "params.zero"},
            {"id": "never", "uses": "orchestrator.echo", "if": "${params.missing}"},
            {"id": "after", "uses": "orchestrator.echo", "with": {"never": "${steps.never}"}, "if": "event.topic"},
        ],
    }
    report = pipeline_dry_run(payload=payload, step_outputs={"never": {"x": 1}}, event={"topic": "t"})
    assert [(s["id"], s["if_result"]) for s in report["steps"]] == [("always", True), ("never", False), ("after", True)]
    assert _step(report, "after")["rendered_input"] == {"never": None}


def test_runtime_template_errors_are_errors() -> None:
    payload = {
        "params": {"n": 5},
        "pipeline": [{"id": "t", "uses": "orchestrator.echo", "with": {"x": "${length(params.n)}"}}],
    }
    report = pipeline_dry_run(payload=payload)
    assert report["valid"] is False
    assert report["errors"][0]["field"] == "payload.pipeline.0.with"
    assert "length" in report["errors"][0]["message"]


def test_dry_run_never_calls_a_tool(spy: list[Any]) -> None:
    report = pipeline_dry_run(
        payload={
            "pipeline": [
                {"id": "s", "uses": "testing.spy", "with": {"a": 1}},
                {"uses": "orchestrator.wait", "with": {"seconds": 60}},
            ]
        }
    )
    assert report["valid"] is True
    assert spy == []


def _nested(depth: int) -> Any:
    value: Any = "${params.n}"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [25, 500, 5000])
def test_a_too_deep_payload_is_reported_without_rendering_it(depth: int) -> None:
    report = pipeline_dry_run(
        payload={"pipeline": [{"id": "deep", "uses": "orchestrator.echo", "with": _nested(depth)}]}
    )

    assert report["valid"] is False
    assert report["steps"] == [], "nothing rendered"
    assert [(e["field"], "nests deeper" in e["message"]) for e in report["errors"]] == [("payload", True)]


def test_a_too_big_payload_is_reported_without_rendering_it(settings: Any) -> None:
    settings.ORDINAUT_MAX_PAYLOAD_BYTES = 1000
    payload = {"pipeline": [{"id": "big", "uses": "orchestrator.echo", "with": {"x": "${params.n}" * 200}}]}

    report = pipeline_dry_run(payload=payload)

    assert (report["valid"], report["steps"]) == (False, [])
    assert report["errors"][0]["field"] == "payload"


def test_a_foreach_step_checks_its_item_template_against_a_sample_item() -> None:
    payload = {
        "pipeline": [
            {"id": "find", "uses": "orchestrator.echo"},
            {
                "id": "send",
                "uses": "telegram-mcp.send_message",
                "foreach": "${steps.find.chats}",
                "with": {"chat_id": "${item.id}", "text": "hi ${item.name} (#${item_index})"},
            },
        ]
    }
    good = pipeline_dry_run(payload=payload, step_outputs={"find": {"chats": [{"id": 7, "name": "Ana"}, {"id": 8}]}})
    bad = pipeline_dry_run(payload=payload, step_outputs={"find": {"chats": [{"id": "seven", "name": "Ana"}]}})
    not_a_list = pipeline_dry_run(payload=payload, step_outputs={"find": {"chats": "Ana"}})
    unknown = pipeline_dry_run(payload=payload)

    assert good["valid"], good["errors"]
    assert _step(good, "send")["foreach"] == {"items": 2, "sample_item": {"id": 7, "name": "Ana"}}
    assert _step(good, "send")["rendered_input"] == {"chat_id": 7, "text": "hi Ana (#0)"}
    assert not bad["valid"]
    assert any(e["field"] == "payload.pipeline.1.with" and "chat_id" in e["message"] for e in bad["errors"])
    assert not not_a_list["valid"]
    assert any("not a list" in e["message"] for e in not_a_list["errors"])
    assert any(w["field"] == "payload.pipeline.1.foreach" for w in unknown["warnings"])
