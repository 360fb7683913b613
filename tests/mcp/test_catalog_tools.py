"""MCP list_tools: the tool catalog as GET /tools lists it."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db


def test_list_tools_answers_what_get_tools_answers(tools: Any, agent: Any) -> None:
    listed = tools.ok("list_tools", limit=500)

    rest = agent.client.get("/tools?limit=500").json()
    assert listed["count"] == rest["count"]
    assert listed["results"] == rest["results"]
    assert "orchestrator.echo" in {tool["name"] for tool in listed["results"]}


def test_list_tools_filters_by_server_and_text_and_pages(tools: Any) -> None:
    builtins = tools.ok("list_tools", server="orchestrator")
    found = tools.ok("list_tools", search="ECHO")
    first = tools.ok("list_tools", server="orchestrator", limit=1)

    assert builtins["count"] >= 2
    assert {tool["server"] for tool in builtins["results"]} == {"orchestrator"}
    assert "orchestrator.echo" in {tool["name"] for tool in found["results"]}
    assert len(first["results"]) == 1
    assert first["next_offset"] == 1
    assert tools.ok("list_tools", server="no-such-server")["count"] == 0
