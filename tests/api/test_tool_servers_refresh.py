"""POST /tool-servers/{name}/refresh: list the server's tools now (MCP tools/list) into the catalog;
a server that cannot be asked is a 502 `tool_server_unreachable`, and its tools stay."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.models import AuditLog
from pipelines.models import Tool, ToolServer
from tests.support.api_matrix import assert_error
from tests.support.mcp_servers import TOKEN, TOKEN_ENV, TOOL_NAMES, free_port, http_server, shared_http_server
from tests.support.tool_servers import register_http

pytestmark = pytest.mark.django_db


@pytest.fixture
def writer(make_agent: Any) -> Any:
    return make_agent(scopes=["tools:read", "tools:write"])


def test_refresh_answers_the_servers_tools(writer: Any) -> None:
    server = register_http(shared_http_server().url, refresh=False)

    response = writer.client.post(f"/tool-servers/{server.name}/refresh", HTTP_X_REQUEST_ID="refresh-1")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert sorted(tool["name"] for tool in body["tools"]) == [f"{server.name}.{name}" for name in TOOL_NAMES]
    assert body["added"] == TOOL_NAMES
    assert (body["removed"], body["changed"], body["skipped"]) == ([], [], [])
    assert body["server"]["tool_count"] == len(TOOL_NAMES)
    assert body["server"]["last_refreshed_at"]
    forecast = next(tool for tool in body["tools"] if tool["name"].endswith(".forecast"))
    assert forecast["input_schema"]["required"] == ["city"]
    row = AuditLog.objects.get(request_id="refresh-1")
    assert (row.action, row.subject_id, row.actor_id) == ("tool_server.refresh", str(server.pk), str(writer.agent.pk))
    again = writer.client.post(f"/tool-servers/{server.name}/refresh").json()
    assert again["added"] == []


def test_a_header_from_the_environment_reaches_the_server_and_is_never_answered(writer: Any) -> None:
    with http_server(token=TOKEN) as protected:
        server = register_http(protected.url, refresh=False, headers_from_env={"Authorization": TOKEN_ENV})
        response = writer.client.post(f"/tool-servers/{server.name}/refresh")
    assert response.status_code == 200, response.json()
    assert TOKEN not in response.content.decode()
    assert TOKEN not in json.dumps(writer.client.get("/tool-servers").json())


def test_an_unreachable_server_is_502_and_keeps_its_tools(writer: Any) -> None:
    server = register_http(shared_http_server().url)
    ToolServer.objects.filter(pk=server.pk).update(url=f"http://127.0.0.1:{free_port()}/mcp")

    response = writer.client.post(f"/tool-servers/{server.name}/refresh")

    assert_error(response, 502, "tool_server_unreachable")
    assert server.name in response.json()["error"]["message"]
    assert "ConnectError" in response.json()["error"]["message"]
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)
    listed = writer.client.get(f"/tool-servers/{server.name}").json()
    assert "ConnectError" in listed["last_error"]
    assert listed["last_error_at"]


def test_credentials_the_server_refuses_are_502_with_the_reason(writer: Any) -> None:
    with http_server(token=TOKEN) as protected:
        server = register_http(protected.url, refresh=False)
        response = writer.client.post(f"/tool-servers/{server.name}/refresh")
    assert_error(response, 502, "tool_server_unreachable")
    assert "401" in response.json()["error"]["message"]


def test_an_unknown_server_is_404(writer: Any) -> None:
    assert_error(writer.client.post("/tool-servers/nobody/refresh"), 404, "not_found")


def test_needs_a_token_and_tools_write(make_agent: Any) -> None:
    server = register_http("http://127.0.0.1:9/mcp", refresh=False)
    assert_error(APIClient().post(f"/tool-servers/{server.name}/refresh"), 401, "not_authenticated")
    reader = make_agent(scopes=["tools:read"])
    assert_error(reader.client.post(f"/tool-servers/{server.name}/refresh"), 403, "permission_denied")
    assert not AuditLog.objects.filter(action="tool_server.refresh").exists()
