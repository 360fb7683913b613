"""Test doubles of the tools the seed's example pipelines name, registered via ORDINAUT_TOOL_MODULES.

They stand in for MCP servers outside the machine (calendar, weather, LLM, Telegram, mail) and
answer deterministically from their input, with input and output schemas like the real ones.
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.tools import ToolCall, tool_register

STRING = {"type": "string"}
INTEGER = {"type": "integer"}


def _object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


@tool_register(
    "google-calendar-mcp.list_events",
    description="Events between two times.",
    input_schema=_object({"start": {"type": "string", "format": "date-time"}, "end": STRING}, ["start", "end"]),
    output_schema=_object({"events": {"type": "array"}}, ["events"]),
)
def list_events(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"events": [{"title": "Standup", "start": payload["start"]}, {"title": "Review", "end": payload["end"]}]}


@tool_register(
    "weather-mcp.forecast",
    description="Today's forecast for a city.",
    input_schema=_object({"city": STRING}, ["city"]),
    output_schema=_object({"city": STRING, "summary": STRING, "high_c": {"type": "number"}}, ["summary"]),
)
def forecast(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"city": payload["city"], "summary": "sunny", "high_c": 21}


@tool_register(
    "llm.plan",
    description="A briefing written from the calendar and the weather.",
    input_schema=_object({"instruction": STRING, "calendar": {"type": "object"}, "weather": {"type": "object"}}, []),
    output_schema=_object({"text": STRING}, ["text"]),
)
def plan(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    events = len((payload.get("calendar") or {}).get("events", []))
    summary = (payload.get("weather") or {}).get("summary", "unknown")
    return {"text": f"{events} events today; weather {summary}."}


@tool_register(
    "telegram-mcp.send_message",
    description="Sends a Telegram message.",
    input_schema=_object({"chat_id": INTEGER, "text": {"type": "string", "minLength": 1}}, ["chat_id", "text"]),
    output_schema=_object({"message_id": INTEGER, "text": STRING}, ["message_id"]),
)
def send_message(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"message_id": 1, "text": payload["text"]}


@tool_register(
    "imap-mcp.find_outbound_without_reply",
    description="Sent mails that got no reply.",
    input_schema=_object({"lookback_days": INTEGER, "min_age_hours": INTEGER}, ["lookback_days"]),
    output_schema=_object({"threads": {"type": "array"}}, ["threads"]),
)
def find_outbound(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"threads": [{"id": "t1", "to": "ana@example.com"}, {"id": "t2", "to": "ion@example.com"}]}


@tool_register(
    "llm.generate_followups",
    description="Drafts a follow-up per thread.",
    input_schema=_object({"emails": {"type": "array"}, "tone": STRING}, ["emails"]),
    output_schema=_object({"count": INTEGER, "messages": {"type": "array"}}, ["count", "messages"]),
)
def generate_followups(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    tone = payload.get("tone")
    messages = [{"thread": thread["id"], "text": f"Following up ({tone})"} for thread in payload["emails"]]
    return {"count": len(messages), "messages": messages}


@tool_register(
    "gmail-mcp.send_followups",
    description="Sends the drafts.",
    input_schema=_object({"drafts": {"type": "array"}}, ["drafts"]),
    output_schema=_object({"sent": INTEGER, "threads": {"type": "array"}}, ["sent"]),
)
def send_followups(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    return {"sent": len(payload["drafts"]), "threads": [draft["thread"] for draft in payload["drafts"]]}


@tool_register("testing.bug", description="A tool with a bug: raises a plain Python exception.")
def bug(payload: Any, call: ToolCall) -> Any:
    raise KeyError("oops")


@tool_register(
    "testing.sleep",
    description="A tool that hangs, ignoring its timeout (only the worker's time limit stops it).",
    input_schema=_object({"seconds": {"type": "number"}}, ["seconds"]),
)
def sleep(payload: dict[str, Any], call: ToolCall) -> Any:
    time.sleep(payload["seconds"])
    return {"slept": payload["seconds"]}


@tool_register("testing.log_context", description="The log correlation fields this step runs with (a probe).")
def log_context(payload: Any, call: ToolCall) -> dict[str, Any]:
    from ordinaut_site import logs

    return {field: logs.current(field) for field in ("request_id", "run", "step")}
