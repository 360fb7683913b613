"""The admin for tool servers and their tools: pages show variable names (never values), operators
add servers (refreshed at once), refresh, change and delete them, and price tools; all audited."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from ordinaut_site.models import AuditLog
from pipelines.models import Tool, ToolServer
from tests.support.mcp_servers import TOKEN, TOKEN_ENV, TOOL_NAMES, free_port, shared_http_server
from tests.support.tool_servers import register_http, unique_name

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator() -> Client:
    user = User.objects.create_superuser("operator", "op@example.com", "pw-not-used")
    client = Client()
    client.force_login(user)
    return client


def form(**fields: Any) -> dict[str, Any]:
    base = {
        "name": unique_name(),
        "transport": "streamable_http",
        "url": shared_http_server().url,
        "command": "",
        "args": "[]",
        "headers_from_env": "{}",
        "env_from_env": "{}",
        "timeout_seconds": "10",
        "enabled": "on",
    }
    return base | fields


def test_pages_show_servers_and_variable_names_but_never_values(operator: Client) -> None:
    server = register_http(shared_http_server().url, headers_from_env={"X-Api-Key": TOKEN_ENV})

    listing = operator.get("/admin/pipelines/toolserver/")
    page = operator.get(f"/admin/pipelines/toolserver/{server.pk}/change/")
    tools = operator.get("/admin/pipelines/tool/")

    assert listing.status_code == page.status_code == tools.status_code == 200
    assert server.name in listing.content.decode()
    assert TOKEN_ENV in page.content.decode()
    assert f"{server.name}.forecast" in tools.content.decode()
    for response in (listing, page, tools):
        assert TOKEN not in response.content.decode()


def test_adding_a_server_registers_and_refreshes_it(operator: Client) -> None:
    data = form()

    response = operator.post("/admin/pipelines/toolserver/add/", data)

    assert response.status_code == 302, response.content.decode()[:2000]
    server = ToolServer.objects.get(name=data["name"])
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)
    actions = set(AuditLog.objects.filter(subject_id=str(server.pk)).values_list("action", "actor_kind"))
    assert actions == {("tool_server.create", "user"), ("tool_server.refresh", "user")}


def test_a_stdio_server_may_be_added_by_an_operator(operator: Client) -> None:
    data = form(transport="stdio", url="", command=sys.executable, args='["-m", "tests.support.mcp_servers", "stdio"]')

    response = operator.post("/admin/pipelines/toolserver/add/", data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Tool.objects.filter(server__name=data["name"]).count() == len(TOOL_NAMES)


def test_bad_settings_are_form_errors(operator: Client) -> None:
    response = operator.post("/admin/pipelines/toolserver/add/", form(url="ftp://x/mcp"))
    assert response.status_code == 200
    assert "must be an http:// or https:// URL" in response.content.decode()
    assert not ToolServer.objects.exists()


def test_changing_a_server_is_audited_and_its_tools_stay(operator: Client) -> None:
    server = register_http(shared_http_server().url)
    data = form(name=server.name, timeout_seconds="7")

    response = operator.post(f"/admin/pipelines/toolserver/{server.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:2000]
    assert ToolServer.objects.get(pk=server.pk).timeout_seconds == 7
    row = AuditLog.objects.get(action="tool_server.update", subject_id=str(server.pk))
    assert row.details == {"timeout_seconds": 7.0}
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)


def test_refresh_action_reports_unreachable_servers(operator: Client) -> None:
    down = register_http(f"http://127.0.0.1:{free_port()}/mcp", refresh=False)

    response = operator.post(
        "/admin/pipelines/toolserver/", {"action": "refresh", "_selected_action": [str(down.pk)]}, follow=True
    )

    assert "Could not list the tools" in response.content.decode()
    assert ToolServer.objects.get(pk=down.pk).last_error


def test_deleting_a_server_deletes_its_tools_and_is_audited(operator: Client) -> None:
    server = register_http(shared_http_server().url)

    response = operator.post(f"/admin/pipelines/toolserver/{server.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not ToolServer.objects.filter(pk=server.pk).exists()
    assert not Tool.objects.filter(server_id=server.pk).exists()
    row = AuditLog.objects.get(action="tool_server.delete", subject_id=str(server.pk))
    assert row.details["tools"] == len(TOOL_NAMES)


def test_an_operator_prices_a_tool_and_a_refresh_keeps_the_price(operator: Client) -> None:
    server = register_http(shared_http_server().url)
    tool = Tool.objects.get(server=server, name="forecast")

    response = operator.post(f"/admin/pipelines/tool/{tool.pk}/change/", {"cost": "4"})

    assert response.status_code == 302, response.content.decode()[:2000]
    assert Tool.objects.get(pk=tool.pk).cost == 4
    row = AuditLog.objects.get(action="tool.set_cost")
    assert row.details == {"tool": "forecast", "from": 1, "to": 4}
    operator.post("/admin/pipelines/toolserver/", {"action": "refresh", "_selected_action": [str(server.pk)]})
    assert Tool.objects.get(server=server, name="forecast").cost == 4
    assert operator.get("/admin/pipelines/tool/add/").status_code == 403
