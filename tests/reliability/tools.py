"""Tools of the reliability suites (workers import them via ORDINAUT_TOOL_MODULES): each call leaves
a side effect the suite counts against the step records."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from pipelines.tools import ToolCall, tool_register

_clients: dict[str, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url)
    return _clients[url]


@tool_register(
    "reliability.count",
    description="Appends run:step:attempt to a Redis list (the side effect), then sleeps a little.",
    input_schema={
        "type": "object",
        "properties": {"key": {"type": "string"}, "sleep_s": {"type": "number"}, "n": {"type": "integer"}},
        "required": ["key"],
    },
    cost=0,
)
def count(payload: dict[str, Any], call: ToolCall) -> dict[str, Any]:
    client = _client(os.environ.get("RELIABILITY_REDIS_URL") or os.environ["REDIS_URL"])
    client.rpush(payload["key"], f"{call.run_id}:{call.step_id}:{call.attempt}")
    if payload.get("sleep_s"):
        time.sleep(float(payload["sleep_s"]))
    return {"n": payload.get("n"), "attempt": call.attempt}
