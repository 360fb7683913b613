"""GET /tools: every tool a step can name — built-ins, Python tools and enabled MCP servers' catalogs."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.api_matrix import assert_error
from tests.support.mcp_servers import TOOL_NAMES, shared_http_server
from tests.support.tool_servers import register_http

pytestmark = pytest.mark.django_db

ITEM_KEYS = {"name", "server", "description", "input_schema", "output_schema", "cost"}


def _all(client: APIClient, query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/tools?limit=500{query}")
    assert response.status_code == 200, response.json()
    return list(response.json()["results"])


def test_lists_built_ins_python_tools_and_the_mcp_catalog(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    server = register_http(shared_http_server().url)

    tools = {tool["name"]: tool for tool in _all(reader.client)}

    assert {"orchestrator.echo", "orchestrator.http", "weather-mcp.forecast"} <= set(tools)
    assert {f"{server.name}.{name}" for name in TOOL_NAMES} <= set(tools)
    forecast = tools[f"{server.name}.forecast"]
    assert set(forecast) == ITEM_KEYS
    assert forecast["server"] == server.name
    assert forecast["description"] == "Today's forecast for a city."
    assert forecast["input_schema"]["required"] == ["city"]
    assert forecast["output_schema"]["type"] == "object"
    assert forecast["cost"] == 1
    assert (tools["orchestrator.echo"]["server"], tools["orchestrator.echo"]["cost"]) == ("orchestrator", 0)
    assert tools[f"{server.name}.notes"]["output_schema"] is None


def test_filters_by_server_and_searches_names_and_descriptions(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    server = register_http(shared_http_server().url)

    assert {tool["name"] for tool in _all(reader.client, f"&server={server.name}")} == {
        f"{server.name}.{name}" for name in TOOL_NAMES
    }
    assert {tool["server"] for tool in _all(reader.client, "&server=orchestrator")} == {"orchestrator"}
    found = {tool["name"] for tool in _all(reader.client, "&search=FORECAST")}
    assert {f"{server.name}.forecast", "weather-mcp.forecast"} <= found
    assert {tool["name"] for tool in _all(reader.client, f"&server={server.name}&search=sleeps")} == {
        f"{server.name}.slow"
    }
    assert _all(reader.client, "&server=nobody") == []
    assert len(_all(reader.client, "&server=&search=")) == len(_all(reader.client))


def test_disabled_servers_tools_are_not_listed(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    server = register_http(shared_http_server().url, enabled=False)
    assert _all(reader.client, f"&server={server.name}") == []


def test_is_paginated(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    body = reader.client.get("/tools?limit=2").json()
    assert body["count"] > 2
    assert len(body["results"]) == 2
    assert body["next"]
    assert_error(reader.client.get("/tools?limit=0"), 400, "validation_error")


def test_needs_a_token_and_the_tools_read_scope(make_agent: Any) -> None:
    assert_error(APIClient().get("/tools"), 401, "not_authenticated")
    response = make_agent(scopes=["tasks:read"]).client.get("/tools")
    assert_error(response, 403, "permission_denied")
    assert "tools:read" in response.json()["error"]["message"]
