"""Builders for task payloads used across tests."""

from __future__ import annotations

from typing import Any


def echo_pipeline(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "params": extra.pop("params", {}),
        "pipeline": [{"id": f"s{i}", "uses": "orchestrator.echo", "with": {"i": i}} for i in range(n)],
    }


def manual_task_body(payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"title": fields.pop("title", "test task"), "schedule_kind": "manual", "payload": payload, **fields}
