"""The tool catalog: discovery from real MCP servers, refresh replacing a server's tools, the resolver
steps use (with its cache), registration rules, the periodic refresh, and steps run in process."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from ordinaut_site.errors import Conflict, ToolServerUnreachable, ValidationFailed
from ordinaut_site.models import AgentUsage, AuditLog
from pipelines.catalog import catalog_cache_clear
from pipelines.dryrun import pipeline_dry_run
from pipelines.jobs import refresh_tool_servers_job
from pipelines.models import Tool, ToolServer
from pipelines.services import tool_server_clean, tool_server_create, tool_server_refresh
from pipelines.tools import tool_find, tool_list
from runs.models import StepRun
from tests.support.mcp_servers import TOOL_NAMES, free_port, shared_http_server
from tests.support.pipelines import run_in_process
from tests.support.tool_servers import TESTS, register_http, register_stdio

pytestmark = pytest.mark.django_db


@pytest.fixture
def server_url() -> str:
    return shared_http_server().url


@pytest.fixture
def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/mcp"


# --- Discovery and refresh ---------------------------------------------------------------------


def test_refresh_discovers_every_tool_with_its_schemas(server_url: str) -> None:
    server = register_http(server_url)

    tools = {tool.name: tool for tool in Tool.objects.filter(server=server)}
    assert sorted(tools) == TOOL_NAMES
    forecast = tools["forecast"]
    assert forecast.description == "Today's forecast for a city."
    assert forecast.input_schema["required"] == ["city"]
    assert forecast.output_schema is not None
    assert forecast.output_schema["properties"]["high_c"]["type"] == "number"
    assert forecast.cost == 1
    assert server.last_refreshed_at is not None
    assert server.last_error == ""
    assert server.protocol_version == "2026-07-28"


def test_refresh_adds_new_tools_removes_gone_ones_updates_changed_ones_and_keeps_the_cost(server_url: str) -> None:
    server = register_http(server_url, refresh=False)
    Tool.objects.create(server=server, name="retired", description="gone from the server")
    Tool.objects.create(server=server, name="forecast", description="an old description", cost=5)

    result = tool_server_refresh(server=server, actor=TESTS)

    assert result.added == sorted(set(TOOL_NAMES) - {"forecast"})
    assert result.removed == ["retired"]
    assert result.changed == ["forecast"]
    names = sorted(Tool.objects.filter(server=server).values_list("name", flat=True))
    assert names == TOOL_NAMES
    forecast = Tool.objects.get(server=server, name="forecast")
    assert forecast.description == "Today's forecast for a city."
    assert forecast.cost == 5
    row = AuditLog.objects.filter(action="tool_server.refresh", subject_id=str(server.pk)).first()
    assert row is not None
    assert row.details["removed"] == ["retired"]
    assert row.details["changed"] == ["forecast"]


def test_a_server_that_cannot_be_reached_keeps_its_tools_and_records_why(server_url: str, dead_url: str) -> None:
    server = register_http(server_url)
    ToolServer.objects.filter(pk=server.pk).update(url=dead_url)
    server.refresh_from_db()

    with pytest.raises(ToolServerUnreachable) as caught:
        tool_server_refresh(server=server, actor=TESTS)

    assert caught.value.status == 502
    assert server.name in caught.value.message
    server.refresh_from_db()
    assert "ConnectError" in server.last_error
    assert server.last_error_at is not None
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)
    audit = AuditLog.objects.filter(action="tool_server.refresh", subject_id=str(server.pk)).first()
    assert audit is not None
    assert audit.details["ok"] is False


def test_a_stdio_server_is_discovered_through_a_subprocess() -> None:
    server = register_stdio()
    assert sorted(Tool.objects.filter(server=server).values_list("name", flat=True)) == TOOL_NAMES


def test_the_periodic_refresh_refreshes_enabled_servers_and_records_failures(server_url: str, dead_url: str) -> None:
    good = register_http(server_url, refresh=False)
    down = register_http(dead_url, refresh=False)
    off = register_http(server_url, refresh=False, enabled=False)
    entry = settings.CELERY_BEAT_SCHEDULE["ordinaut.refresh_tool_servers"]
    assert entry["task"] == refresh_tool_servers_job.name == "pipelines.refresh_tool_servers"
    assert entry["schedule"] == float(settings.ORDINAUT_TOOL_REFRESH_INTERVAL_S)

    outcome = refresh_tool_servers_job()

    assert outcome[good.name].startswith("ok")
    assert "ConnectError" in outcome[down.name]
    assert off.name not in outcome
    assert Tool.objects.filter(server=good).count() == len(TOOL_NAMES)
    assert ToolServer.objects.get(pk=down.pk).last_error
    assert not Tool.objects.filter(server=off).exists()


def test_the_periodic_refresh_audits_changes_and_new_failures_only(server_url: str) -> None:
    server = register_http(server_url, refresh=False)

    refresh_tool_servers_job()
    refresh_tool_servers_job()  # nothing changed: no second row

    rows = AuditLog.objects.filter(action="tool_server.refresh", subject_id=str(server.pk))
    assert rows.count() == 1
    assert (rows[0].actor_kind, rows[0].details["added"][:1]) == ("system", ["environment"])


# --- Registration rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"name": "Bad Name", "url": "http://x/mcp"}, "name", "lower-case"),
        ({"name": "orchestrator", "url": "http://x/mcp"}, "name", "reserved"),
        ({"name": "srv", "url": "ftp://x/mcp"}, "url", "http"),
        ({"name": "srv", "url": "http://user:pw@x/mcp"}, "url", "credentials"),
        ({"name": "srv", "url": "http://x:99999/mcp"}, "url", "port"),
        ({"name": "srv", "url": "http://x/mcp", "headers_from_env": {"Bad Header": "MCP_X"}}, "headers_from_env", ""),
        ({"name": "srv", "url": "http://x/mcp", "headers_from_env": {"X-Key": "not a var"}}, "headers_from_env", ""),
        ({"name": "srv", "url": "http://x/mcp", "timeout_seconds": 0}, "timeout_seconds", ""),
        ({"name": "srv", "url": "http://x/mcp", "command": "python"}, "command", "stdio"),
        ({"name": "srv", "transport": "stdio", "command": ""}, "command", "required"),
        ({"name": "srv", "transport": "stdio", "command": "x", "url": "http://x"}, "url", "streamable_http"),
        ({"name": "srv", "transport": "smoke-signals"}, "transport", ""),
    ],
)
def test_bad_server_settings_are_refused_naming_the_field(fields: dict[str, Any], field: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        tool_server_clean(**fields)
    assert field in caught.value.fields
    assert fragment in caught.value.message


def test_through_the_api_only_http_servers_and_only_prefixed_variables() -> None:
    with pytest.raises(ValidationFailed) as caught:
        tool_server_clean(name="srv", transport="stdio", command="python", from_api=True)
    assert "operators only" in caught.value.message
    with pytest.raises(ValidationFailed) as caught:
        tool_server_clean(name="srv", url="http://x/mcp", headers_from_env={"X-Key": "SECRET_KEY"}, from_api=True)
    assert "MCP_" in caught.value.message
    accepted = tool_server_clean(name="srv", url="http://x/mcp", headers_from_env={"X-Key": "MCP_KEY"}, from_api=True)
    assert accepted.headers_from_env == {"X-Key": "MCP_KEY"}
    # Operators may name any variable.
    assert tool_server_clean(name="srv", url="http://x/mcp", headers_from_env={"X-Key": "SECRET_KEY"})


def test_a_name_is_registered_once() -> None:
    register_http("http://127.0.0.1:9/mcp", name="once", refresh=False)
    with pytest.raises(Conflict):
        tool_server_create(fields=tool_server_clean(name="once", url="http://127.0.0.1:9/mcp"), actor=TESTS)


# --- The resolver -----------------------------------------------------------------------------


def test_a_catalog_tool_resolves_with_its_schemas_and_cost(server_url: str) -> None:
    server = register_http(server_url)
    Tool.objects.filter(server=server, name="forecast").update(cost=3)

    tool = tool_find(f"{server.name}.forecast")

    assert tool is not None
    assert tool.cost == 3
    assert tool.input_schema["required"] == ["city"]
    assert tool.output_schema is not None
    assert f"{server.name}.whoami" in {listed.name for listed in tool_list()}


def test_unknown_and_disabled_tools_do_not_resolve(server_url: str) -> None:
    server = register_http(server_url, enabled=False)
    assert tool_find(f"{server.name}.forecast") is None
    assert tool_find(f"{server.name}.nope") is None
    assert tool_find("no-such-server.forecast") is None
    assert f"{server.name}.forecast" not in {listed.name for listed in tool_list()}


def test_python_tools_win_a_name_clash(server_url: str) -> None:
    register_http(server_url, name="weather-mcp")
    tool = tool_find("weather-mcp.forecast")
    assert tool is not None
    assert tool.description == "Today's forecast for a city."
    assert tool.output_schema is not None
    assert tool.output_schema["required"] == ["summary"]  # tests/support/tools.py's, not the server's


def test_a_resolved_tool_is_reused_without_a_query_until_the_ttl(
    server_url: str, django_assert_num_queries: Any, settings: Any
) -> None:
    server = register_http(server_url)
    name = f"{server.name}.forecast"
    assert tool_find(name) is not None

    with django_assert_num_queries(0):
        assert tool_find(name) is not None

    settings.ORDINAUT_TOOL_CACHE_TTL_S = 0
    catalog_cache_clear()
    assert tool_find(name) is not None
    with django_assert_num_queries(1):
        assert tool_find(name) is not None


# --- Steps, in process -----------------------------------------------------------------------


def test_a_step_calls_the_catalog_tool_and_is_charged_its_cost(agent: Any, server_url: str) -> None:
    server = register_http(server_url)
    Tool.objects.filter(server=server, name="forecast").update(cost=3)
    catalog_cache_clear()
    payload = {"pipeline": [{"id": "w", "uses": f"{server.name}.forecast", "with": {"city": "Chisinau"}}]}

    run = run_in_process(agent.agent, payload)

    assert run.status == "succeeded", run.error
    assert run.result["city"] == "Chisinau"
    usage = AgentUsage.objects.get(agent=agent.agent)
    assert (usage.tool_calls, usage.cost_units) == (1, 3)


def test_input_that_breaks_the_catalog_schema_fails_before_any_call(agent: Any, dead_url: str) -> None:
    """The server is not even up: the step fails on the cached input schema, not on the connection."""
    server = register_http(dead_url, refresh=False)
    Tool.objects.create(
        server=server,
        name="forecast",
        input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    payload = {"pipeline": [{"id": "w", "uses": f"{server.name}.forecast", "with": {"town": "Chisinau"}}]}

    run = run_in_process(agent.agent, payload)

    assert run.status == "failed"
    step = StepRun.objects.get(run=run)
    assert (step.error or {})["code"] == "input_invalid"
    assert step.attempts == 1
    assert "'city' is a required property" in (step.error or {})["message"]
    assert not AgentUsage.objects.filter(agent=agent.agent).exists()  # never called, never charged


def test_output_that_breaks_the_catalog_schema_fails_the_step(agent: Any, server_url: str) -> None:
    server = register_http(server_url)
    Tool.objects.filter(server=server, name="notes").update(output_schema={"type": "object", "required": ["summary"]})
    catalog_cache_clear()
    payload = {"pipeline": [{"id": "n", "uses": f"{server.name}.notes", "with": {"topic": "x"}}]}

    run = run_in_process(agent.agent, payload)

    step = StepRun.objects.get(run=run)
    assert (run.status, (step.error or {})["code"]) == ("failed", "output_invalid")


def test_a_tool_removed_by_a_refresh_is_an_unknown_tool(agent: Any, server_url: str) -> None:
    server = register_http(server_url)
    Tool.objects.filter(server=server, name="forecast").delete()
    catalog_cache_clear()
    payload = {"pipeline": [{"id": "w", "uses": f"{server.name}.forecast", "with": {"city": "x"}}]}

    run = run_in_process(agent.agent, payload)

    assert (run.status, run.error["code"]) == ("failed", "unknown_tool")


# --- Dry-run --------------------------------------------------------------------------------------


def test_dry_run_finds_catalog_tools_and_checks_inputs_against_their_schemas(agent: Any, server_url: str) -> None:
    server = register_http(server_url)
    payload = {
        "pipeline": [
            {"id": "ok", "uses": f"{server.name}.forecast", "with": {"city": "Chisinau"}},
            {"id": "bad", "uses": f"{server.name}.forecast", "with": {"days": "two"}},
            {"id": "gone", "uses": f"{server.name}.teleport", "with": {}},
        ]
    }

    response = agent.client.post("/pipelines/validate", {"payload": payload})

    assert response.status_code == 200, response.json()
    report = response.json()
    ok, bad, gone = report["steps"]
    assert (ok["tool_found"], ok["input_errors"]) == (True, [])
    assert bad["tool_found"] is True
    assert any("'city' is a required property" in problem for problem in bad["input_errors"])
    assert gone["tool_found"] is False
    assert report["valid"] is False
    assert pipeline_dry_run(payload=payload)["steps"][0]["tool_found"] is True
