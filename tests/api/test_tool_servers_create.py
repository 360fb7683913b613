"""POST /tool-servers: an agent holding `admin` registers a streamable HTTP MCP server (docs/mcp.md).
No connection is made (refresh discovers the tools); stdio servers are for operators only."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.models import AuditLog
from pipelines.models import Tool, ToolServer
from tests.support.api_matrix import assert_error

pytestmark = pytest.mark.django_db

BODY = {"name": "weather", "url": "https://weather.example.com/mcp"}


@pytest.fixture
def admin(make_agent: Any) -> Any:
    return make_agent(admin=True)


def test_admin_registers_an_http_server_without_contacting_it(admin: Any) -> None:
    body = {**BODY, "headers_from_env": {"Authorization": "MCP_WEATHER_TOKEN"}, "timeout_seconds": 10}

    response = admin.client.post("/tool-servers", body, HTTP_X_REQUEST_ID="register-1")

    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["name"] == "weather"
    assert created["transport"] == "streamable_http"
    assert created["header_names"] == ["Authorization"]
    assert created["timeout_seconds"] == 10
    assert (created["tool_count"], created["last_refreshed_at"], created["last_error"]) == (0, None, "")
    assert created["created_by"] == {"kind": "agent", "id": str(admin.agent.pk), "name": admin.agent.name}
    server = ToolServer.objects.get(name="weather")
    assert not Tool.objects.filter(server=server).exists()
    row = AuditLog.objects.get(request_id="register-1")
    assert (row.action, row.subject_type, row.subject_id) == ("tool_server.create", "tool_server", str(server.pk))
    assert row.details["headers_from_env"] == {"Authorization": "MCP_WEATHER_TOKEN"}


def test_tools_write_alone_may_not_register_servers(make_agent: Any) -> None:
    writer = make_agent(scopes=["tools:read", "tools:write"])
    response = writer.client.post("/tool-servers", BODY)
    assert_error(response, 403, "permission_denied")
    assert "'admin'" in response.json()["error"]["message"]
    assert not ToolServer.objects.exists()


def test_needs_a_token() -> None:
    assert_error(APIClient().post("/tool-servers", BODY, format="json"), 401, "not_authenticated")


def test_stdio_is_refused_with_a_clear_message(admin: Any) -> None:
    response = admin.client.post("/tool-servers", {"name": "local", "transport": "stdio", "url": "http://x/mcp"})
    assert_error(response, 400, "validation_error")
    assert "operators" in response.json()["error"]["fields"]["transport"][0]
    assert not ToolServer.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://x/mcp"}, "name"),
        ({"name": "UPPER", "url": "https://x/mcp"}, "name"),
        ({"name": "orchestrator", "url": "https://x/mcp"}, "name"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": "file:///etc/passwd"}, "url"),
        ({"name": "x", "url": "https://user:secret@x/mcp"}, "url"),
        ({"name": "x", "url": "http://[::1/mcp"}, "url"),  # urlsplit raised ValueError: a 500
        ({"name": "x", "url": "http://[::1]:99999/mcp"}, "url"),
        ({"name": "x", "url": "https://x/mcp", "headers_from_env": {"X-Key": "DATABASE_URL"}}, "headers_from_env"),
        ({"name": "x", "url": "https://x/mcp", "headers_from_env": {"Bad Header": "MCP_X"}}, "headers_from_env"),
        ({"name": "x", "url": "https://x/mcp", "headers_from_env": ["MCP_X"]}, "headers_from_env"),
        ({"name": "x", "url": "https://x/mcp", "timeout_seconds": 0}, "timeout_seconds"),
        ({"name": "x", "url": "https://x/mcp", "timeout_seconds": 10**9}, "timeout_seconds"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(body: dict[str, Any], field: str, admin: Any) -> None:
    response = admin.client.post("/tool-servers", body)
    assert_error(response, 400, "validation_error")
    assert field in response.json()["error"]["fields"], response.json()
    assert not ToolServer.objects.exists()


def test_a_taken_name_is_409(admin: Any) -> None:
    assert admin.client.post("/tool-servers", BODY).status_code == 201
    response = admin.client.post("/tool-servers", {**BODY, "url": "https://other.example.com/mcp"})
    assert_error(response, 409, "conflict")
    assert ToolServer.objects.get(name="weather").url == BODY["url"]
