"""The tool registry (resolver chain, schemas) and the built-in tools called directly."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from ordinaut_site.errors import (
    HostNotAllowed,
    HttpStatusError,
    ToolInputInvalid,
    ToolOutputTooLarge,
    ToolTimeout,
    ToolUnavailable,
    UnknownTool,
)
from pipelines.builtins import host_allowed
from pipelines.tools import (
    AwaitApproval,
    Suspend,
    Tool,
    ToolCall,
    resolver_add,
    resolver_remove,
    schema_errors,
    tool_list,
    tool_resolve,
)
from tests.support.servers import LoopbackServer, Reply, loopback_server

CALL = ToolCall(run_id="r", step_id="s", timeout_s=5)


@pytest.fixture
def server() -> Any:
    with loopback_server() as srv:
        yield srv


def _call(name: str, payload: Any, call: ToolCall = CALL) -> Any:
    tool = tool_resolve(name)
    assert schema_errors(tool.input_schema, payload) == []
    return tool.func(payload, call)


@pytest.mark.django_db  # the list includes the MCP catalog
def test_builtins_are_listed_with_schemas() -> None:
    names = {tool.name for tool in tool_list()}
    assert {
        "orchestrator.echo",
        "orchestrator.transform",
        "orchestrator.wait",
        "orchestrator.request_approval",
        "orchestrator.http",
    } <= names
    assert tool_resolve("orchestrator.http").input_schema["required"] == ["url"]


@pytest.mark.django_db  # an unknown name is also looked for in the MCP catalog
def test_unknown_tool_is_a_permanent_error() -> None:
    with pytest.raises(UnknownTool) as caught:
        tool_resolve("nowhere.thing")
    assert caught.value.retryable is False


@pytest.mark.django_db  # the MCP catalog is in the chain too
def test_a_resolver_added_later_serves_its_tools_after_the_python_ones() -> None:
    class Catalog:
        def __init__(self, tools: Iterable[Tool]) -> None:
            self._tools = {tool.name: tool for tool in tools}

        def resolve(self, name: str) -> Tool | None:
            return self._tools.get(name)

        def tools(self) -> Iterable[Tool]:
            return self._tools.values()

    remote = Tool("remote.ping", "answers pong", lambda payload, call: "pong")
    shadow = Tool("orchestrator.echo", "must not win", lambda payload, call: "shadowed")
    catalog = Catalog([remote, shadow])
    resolver_add(catalog)
    try:
        assert tool_resolve("remote.ping").func({}, CALL) == "pong"
        assert tool_resolve("orchestrator.echo").func({"a": 1}, CALL) == {"a": 1}
        assert "remote.ping" in {tool.name for tool in tool_list()}
    finally:
        resolver_remove(catalog)
    with pytest.raises(UnknownTool):
        tool_resolve("remote.ping")


def test_schema_errors_name_the_path() -> None:
    schema = tool_resolve("weather-mcp.forecast").input_schema
    assert schema_errors(schema, {"city": 5}, prefix="with") == ["with.city: 5 is not of type 'string'"]
    assert schema_errors(schema, {}, prefix="with") == ["with: 'city' is a required property"]


def test_transform_evaluates_jmespath_over_its_data() -> None:
    data = {"items": [{"name": "a", "price": 5}, {"name": "b", "price": 15}]}
    payload = {"data": data, "expression": "items[?price > `10`].name"}
    assert _call("orchestrator.transform", payload) == ["b"]
    with pytest.raises(ToolInputInvalid):
        _call("orchestrator.transform", {"data": data, "expression": "items[?"})


def test_wait_suspends_until_its_time_then_returns() -> None:
    with pytest.raises(Suspend) as caught:
        _call("orchestrator.wait", {"seconds": 30})
    until = caught.value.until
    assert timedelta(seconds=29) < until - timezone.now() <= timedelta(seconds=30)
    resumed = ToolCall(run_id="r", step_id="s", timeout_s=5, resume_at=timezone.now() - timedelta(seconds=1))
    assert "waited_until" in _call("orchestrator.wait", {"seconds": 30}, resumed)
    with pytest.raises(ToolInputInvalid, match="UTC offset"):
        _call("orchestrator.wait", {"until": "2030-01-01T10:00:00"})


def test_request_approval_asks_the_engine_to_wait(settings: Any) -> None:
    with pytest.raises(AwaitApproval) as caught:
        _call("orchestrator.request_approval", {"message": "ok?", "data": [1, 2]})
    assert (caught.value.message, caught.value.data) == ("ok?", [1, 2])
    assert caught.value.timeout_s == settings.ORDINAUT_APPROVAL_TIMEOUT_S


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080/x", True),
        ("https://api.example.com/v1", True),
        ("http://api.example.com:9000/", True),
        ("https://eu.svc.example.org/", True),
        ("https://svc.example.org/", False),
        ("http://localhost:8001/", True),
        ("http://localhost:8002/", False),
        ("http://evil.com/", False),
        ("http://api.example.com@evil.com/", False),
        ("http://evil.com/?api.example.com", False),
        ("ftp://api.example.com/", False),
        ("file:///etc/passwd", False),
        ("http://[::1]:8080/", False),
        ("not a url", False),
    ],
)
def test_http_allow_list(settings: Any, url: str, allowed: bool) -> None:
    settings.ORDINAUT_HTTP_ALLOWED_HOSTS = ["127.0.0.1", "api.example.com", "*.svc.example.org", "localhost:8001"]
    assert host_allowed(url) is allowed


def test_http_returns_status_headers_and_json(server: LoopbackServer) -> None:
    server.script("/hello", Reply(200, {"hi": "there"}, headers={"X-Thing": "1"}))
    result = _call(
        "orchestrator.http",
        {"method": "POST", "url": server.url("/hello"), "json": {"a": 1}, "query": {"q": "x", "n": 2}},
    )
    assert result["status"] == 200
    assert result["json"] == {"hi": "there"}
    assert result["headers"]["x-thing"] == "1"
    hit = server.hits[-1]
    assert (hit.method, hit.path, hit.body) == ("POST", "/hello?q=x&n=2", b'{"a":1}')


def test_http_error_statuses_are_transient_or_permanent(server: LoopbackServer) -> None:
    server.script("/busy", Reply(503))
    server.script("/slow-down", Reply(429))
    server.script("/gone", Reply(404))
    for path, retryable in (("/busy", True), ("/slow-down", True), ("/gone", False)):
        with pytest.raises(HttpStatusError) as caught:
            _call("orchestrator.http", {"url": server.url(path)})
        assert caught.value.retryable is retryable
    assert _call("orchestrator.http", {"url": server.url("/gone"), "raise_for_status": False})["status"] == 404


def test_http_timeout_and_connection_errors_are_transient(server: LoopbackServer) -> None:
    server.script("/slow", Reply(200, delay_s=2))
    with pytest.raises(ToolTimeout) as caught:
        _call("orchestrator.http", {"url": server.url("/slow"), "timeout_seconds": 0.2})
    assert caught.value.retryable is True
    closed = LoopbackServer().start()
    port = closed.port
    closed.stop()
    with pytest.raises(ToolUnavailable):
        _call("orchestrator.http", {"url": f"http://127.0.0.1:{port}/"})


def test_http_refuses_hosts_outside_the_allow_list_and_big_bodies(server: LoopbackServer, settings: Any) -> None:
    with pytest.raises(HostNotAllowed):
        _call("orchestrator.http", {"url": "http://example.com/"})
    settings.ORDINAUT_HTTP_MAX_RESPONSE_BYTES = 100
    server.script("/big", Reply(200, {"x": "y" * 500}))
    with pytest.raises(ToolOutputTooLarge):
        _call("orchestrator.http", {"url": server.url("/big")})
