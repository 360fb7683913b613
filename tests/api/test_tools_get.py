"""GET /tools/{name}: one tool by the name steps use (`server.tool`); 404 for any other name."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.api_matrix import assert_error
from tests.support.mcp_servers import shared_http_server
from tests.support.tool_servers import register_http

pytestmark = pytest.mark.django_db


def test_a_catalog_tool_with_its_schemas(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    server = register_http(shared_http_server().url)

    response = reader.client.get(f"/tools/{server.name}.forecast")

    assert response.status_code == 200
    body = response.json()
    assert body["name"] == f"{server.name}.forecast"
    assert body["server"] == server.name
    assert body["input_schema"]["properties"]["city"]["type"] == "string"
    assert reader.client.get(f"/tools/{server.name}.forecast/").json() == body


def test_a_built_in(make_agent: Any) -> None:
    body = make_agent(scopes=["tools:read"]).client.get("/tools/orchestrator.transform").json()
    assert body["server"] == "orchestrator"
    assert body["input_schema"]["required"] == ["expression"]


@pytest.mark.parametrize("name", ["orchestrator.nope", "nowhere.tool", "no-dot", "x..y"])
def test_an_unknown_name_is_404(name: str, make_agent: Any) -> None:
    assert_error(make_agent(scopes=["tools:read"]).client.get(f"/tools/{name}"), 404, "not_found")


def test_a_disabled_servers_tool_is_404(make_agent: Any) -> None:
    server = register_http(shared_http_server().url, enabled=False)
    assert_error(make_agent(scopes=["tools:read"]).client.get(f"/tools/{server.name}.forecast"), 404, "not_found")


def test_needs_a_token_and_the_tools_read_scope(make_agent: Any) -> None:
    assert_error(APIClient().get("/tools/orchestrator.echo"), 401, "not_authenticated")
    assert_error(make_agent(scopes=["tools:write"]).client.get("/tools/orchestrator.echo"), 403, "permission_denied")
