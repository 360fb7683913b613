"""GET /tool-servers and /tool-servers/{name}: where each server is and which variables it reads,
by name only: a secret's value is never in an answer."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.api_matrix import assert_error
from tests.support.mcp_servers import TOKEN, TOKEN_ENV, TOOL_NAMES, http_server
from tests.support.tool_servers import register_http, register_stdio

pytestmark = pytest.mark.django_db

SERVER_KEYS = {
    "id",
    "name",
    "transport",
    "url",
    "command",
    "args",
    "headers_from_env",
    "header_names",
    "env_from_env",
    "timeout_seconds",
    "enabled",
    "tool_count",
    "protocol_version",
    "last_refreshed_at",
    "last_error",
    "last_error_at",
    "created_by",
    "created_at",
}


def test_lists_servers_newest_first_with_header_and_variable_names_only(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    with http_server(token=TOKEN) as protected:
        http = register_http(protected.url, headers_from_env={"Authorization": TOKEN_ENV})
    stdio = register_stdio(env_from_env={"CHILD_TOKEN": TOKEN_ENV})

    response = reader.client.get("/tool-servers")

    assert response.status_code == 200
    body = response.json()
    assert [item["name"] for item in body["results"]] == [stdio.name, http.name]
    listed = body["results"][1]
    assert set(listed) == SERVER_KEYS
    assert listed["transport"] == "streamable_http"
    assert listed["url"] == http.url
    assert listed["headers_from_env"] == {"Authorization": TOKEN_ENV}
    assert listed["header_names"] == ["Authorization"]
    assert listed["tool_count"] == len(TOOL_NAMES)
    assert listed["last_refreshed_at"]
    assert listed["created_by"] == {"kind": "system", "id": "", "name": "tests"}
    assert body["results"][0]["env_from_env"] == {"CHILD_TOKEN": TOKEN_ENV}
    assert body["results"][0]["args"][-1] == "stdio"
    assert TOKEN not in json.dumps(body)


def test_one_server_by_name(make_agent: Any) -> None:
    reader = make_agent(scopes=["tools:read"])
    server = register_http("http://127.0.0.1:9/mcp", refresh=False, headers_from_env={"X-Api-Key": TOKEN_ENV})

    response = reader.client.get(f"/tool-servers/{server.name}")

    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["tool_count"], body["last_refreshed_at"]) == (str(server.pk), 0, None)
    assert body["header_names"] == ["X-Api-Key"]
    assert TOKEN not in response.content.decode()


@pytest.mark.parametrize("name", ["nobody", "Upper", "a.b", "a%20b", "-a", "x" * 65])
def test_an_unknown_server_is_404(make_agent: Any, name: str) -> None:
    assert_error(make_agent(scopes=["tools:read"]).client.get(f"/tool-servers/{name}"), 404, "not_found")


def test_needs_a_token_and_the_tools_read_scope(make_agent: Any) -> None:
    assert_error(APIClient().get("/tool-servers"), 401, "not_authenticated")
    assert_error(make_agent(scopes=["tasks:read"]).client.get("/tool-servers"), 403, "permission_denied")
    assert_error(make_agent(scopes=["tasks:read"]).client.get("/tool-servers/any"), 403, "permission_denied")
