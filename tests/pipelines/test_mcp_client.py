"""The MCP client against real MCP servers on loopback (streamable HTTP) and as a subprocess (stdio):
discovery, results, and how each failure maps to a step error that says whether to retry."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ordinaut_site.errors import ToolAuthFailed, ToolFailed, ToolInputInvalid, ToolTimeout, ToolUnavailable
from pipelines.mcp_client import ServerConfig, tool_call, tools_list
from tests.support.mcp_servers import (
    TOKEN,
    TOKEN_ENV,
    TOOL_NAMES,
    HttpServer,
    digest,
    free_port,
    http_server,
    stdio_command,
)

CALL_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def open_server() -> Iterator[HttpServer]:
    with http_server() as server:
        yield server


@pytest.fixture(scope="module")
def protected_server() -> Iterator[HttpServer]:
    with http_server(token=TOKEN) as server:
        yield server


def http(url: str, **fields: Any) -> ServerConfig:
    return ServerConfig(name="testsrv", transport="streamable_http", url=url, **fields)


def stdio(**fields: Any) -> ServerConfig:
    command, args = stdio_command()
    return ServerConfig(name="testsrv", transport="stdio", command=command, args=tuple(args), **fields)


def test_tools_list_over_http_gives_every_tool_with_its_schemas(open_server: HttpServer) -> None:
    listing = tools_list(http(open_server.url))

    tools = {tool.name: tool for tool in listing.tools}
    assert sorted(tools) == TOOL_NAMES
    forecast = tools["forecast"]
    assert forecast.description == "Today's forecast for a city."
    assert forecast.input_schema["required"] == ["city"]
    assert forecast.input_schema["properties"]["days"]["type"] == "integer"
    assert forecast.output_schema is not None
    assert set(forecast.output_schema["required"]) == {"city", "summary", "high_c"}
    assert tools["notes"].output_schema is None
    assert listing.protocol_version == "2026-07-28"


def test_a_structured_result_is_the_output(open_server: HttpServer) -> None:
    output = tool_call(http(open_server.url), "forecast", {"city": "Chisinau", "days": 2}, timeout_s=CALL_TIMEOUT_S)
    assert output == {"city": "Chisinau", "summary": "sunny", "high_c": 21.5, "days": ["day 1", "day 2"]}


def test_a_text_result_is_json_decoded_when_it_is_json(open_server: HttpServer) -> None:
    output = tool_call(http(open_server.url), "notes", {"topic": "mcp"}, timeout_s=CALL_TIMEOUT_S)
    assert output == {"topic": "mcp", "count": 2}


def test_a_known_protocol_version_skips_the_discovery_probe(open_server: HttpServer) -> None:
    config = http(open_server.url, protocol_version="2026-07-28")
    assert tool_call(config, "forecast", {"city": "Iasi"}, timeout_s=CALL_TIMEOUT_S)["city"] == "Iasi"


def test_an_error_result_is_a_permanent_tool_error(open_server: HttpServer) -> None:
    with pytest.raises(ToolFailed) as caught:
        tool_call(http(open_server.url), "fail", {"reason": "no such city"}, timeout_s=CALL_TIMEOUT_S)
    assert caught.value.code == "tool_error"
    assert caught.value.retryable is False
    assert "cannot do it: no such city" in caught.value.message


def test_an_error_result_the_server_marks_retryable_is_retried(open_server: HttpServer) -> None:
    with pytest.raises(ToolFailed) as caught:
        tool_call(http(open_server.url), "flaky", {"reason": "overloaded"}, timeout_s=CALL_TIMEOUT_S)
    assert caught.value.retryable is True
    assert "busy: overloaded" in caught.value.message


def test_arguments_the_server_rejects_are_a_permanent_tool_error(open_server: HttpServer) -> None:
    with pytest.raises(ToolFailed) as caught:
        tool_call(http(open_server.url), "forecast", {"city": 5, "days": "many"}, timeout_s=CALL_TIMEOUT_S)
    assert caught.value.retryable is False


def test_a_slow_tool_times_out_and_may_be_retried(open_server: HttpServer) -> None:
    with pytest.raises(ToolTimeout) as caught:
        tool_call(http(open_server.url, timeout_s=0.5), "slow", {"seconds": 5}, timeout_s=CALL_TIMEOUT_S)
    assert caught.value.retryable is True


def test_the_callers_deadline_bounds_the_call(open_server: HttpServer) -> None:
    with pytest.raises(ToolTimeout):
        tool_call(http(open_server.url, timeout_s=30), "slow", {"seconds": 5}, timeout_s=0.5)


def test_a_server_that_is_down_is_unavailable_and_may_be_retried() -> None:
    with pytest.raises(ToolUnavailable) as caught:
        tool_call(http(f"http://127.0.0.1:{free_port()}/mcp"), "forecast", {"city": "x"}, timeout_s=CALL_TIMEOUT_S)
    assert caught.value.retryable is True
    assert caught.value.code == "tool_unavailable"
    with pytest.raises(ToolUnavailable):
        tools_list(http(f"http://127.0.0.1:{free_port()}/mcp"))


def test_a_wrong_path_is_a_protocol_error_that_may_be_retried(open_server: HttpServer) -> None:
    with pytest.raises(ToolUnavailable):
        tools_list(http(open_server.url.replace("/mcp", "/elsewhere")))


def test_a_server_refusing_the_credentials_is_a_permanent_auth_error(protected_server: HttpServer) -> None:
    with pytest.raises(ToolAuthFailed) as caught:
        tools_list(http(protected_server.url))
    assert caught.value.retryable is False
    assert "401" in caught.value.message
    wrong = {"Authorization": "MCP_TEST_WRONG_TOKEN"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCP_TEST_WRONG_TOKEN", "Bearer not-the-token")
        with pytest.raises(ToolAuthFailed):
            tool_call(http(protected_server.url, headers_from_env=wrong), "whoami", {}, timeout_s=CALL_TIMEOUT_S)


def test_headers_come_from_the_environment_variables_they_name(protected_server: HttpServer) -> None:
    config = http(protected_server.url, headers_from_env={"Authorization": TOKEN_ENV})

    output = tool_call(config, "whoami", {}, timeout_s=CALL_TIMEOUT_S)

    assert output == {"authorization_sha256": digest(f"Bearer {TOKEN}")}
    assert {tool.name for tool in tools_list(config).tools} == set(TOOL_NAMES)


def test_a_header_whose_variable_is_not_set_fails_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCP_TEST_UNSET", raising=False)
    config = http(f"http://127.0.0.1:{free_port()}/mcp", headers_from_env={"X-Api-Key": "MCP_TEST_UNSET"})
    with pytest.raises(ToolAuthFailed) as caught:
        tool_call(config, "forecast", {"city": "x"}, timeout_s=CALL_TIMEOUT_S)
    assert "MCP_TEST_UNSET" in caught.value.message
    assert caught.value.retryable is False


def test_stdio_lists_and_calls_through_a_subprocess() -> None:
    config = stdio()

    assert sorted(tool.name for tool in tools_list(config).tools) == TOOL_NAMES
    assert tool_call(config, "forecast", {"city": "Balti"}, timeout_s=CALL_TIMEOUT_S)["city"] == "Balti"
    with pytest.raises(ToolFailed):
        tool_call(config, "fail", {"reason": "x"}, timeout_s=CALL_TIMEOUT_S)


def test_a_stdio_server_gets_only_the_variables_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subprocess does not inherit Ordinaut's environment (DATABASE_URL, SECRET_KEY, ...)."""
    monkeypatch.setenv("MCP_TEST_CHILD_SECRET", "s3cret")
    config = stdio(env_from_env={"TOOL_SECRET": "MCP_TEST_CHILD_SECRET"})

    seen = tool_call(config, "environment", {"names": ["TOOL_SECRET", "SECRET_KEY", "DATABASE_URL"]}, timeout_s=20)

    assert seen == {"TOOL_SECRET": "s3cret", "SECRET_KEY": None, "DATABASE_URL": None}


def test_a_stdio_command_that_does_not_exist_is_unavailable() -> None:
    config = ServerConfig(name="testsrv", transport="stdio", command="/nonexistent/mcp-server")
    with pytest.raises(ToolUnavailable):
        tools_list(config)


def test_non_object_input_is_refused_before_the_call(open_server: HttpServer) -> None:
    with pytest.raises(ToolInputInvalid):
        tool_call(http(open_server.url), "forecast", ["Chisinau"], timeout_s=CALL_TIMEOUT_S)
