"""`manage.py add_tool_server` (HTTP and stdio) and `manage.py refresh_tools`, against real MCP servers."""

from __future__ import annotations

import sys
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from ordinaut_site.models import AuditLog
from pipelines.models import Tool, ToolServer
from tests.support.mcp_servers import TOKEN, TOKEN_ENV, TOOL_NAMES, free_port, http_server, shared_http_server
from tests.support.tool_servers import register_http, unique_name

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_add_an_http_server_with_a_header_from_the_environment_and_print_its_tools() -> None:
    name = unique_name()
    with http_server(token=TOKEN) as protected:
        out, err = run(
            "add_tool_server", name, "--url", protected.url, "--header", f"Authorization={TOKEN_ENV}", "--timeout", "5"
        )

    server = ToolServer.objects.get(name=name)
    assert (server.transport, server.url, server.timeout_seconds) == ("streamable_http", protected.url, 5)
    assert server.headers_from_env == {"Authorization": TOKEN_ENV}
    assert [line.split("\t")[0] for line in out.splitlines()] == [f"{name}.{tool}" for tool in TOOL_NAMES]
    assert f"{len(TOOL_NAMES)} tool(s) found" in err
    row = AuditLog.objects.get(action="tool_server.create", subject_id=str(server.pk))
    assert (row.actor_kind, row.actor_name) == ("system", "manage.py add_tool_server")


def test_add_a_stdio_server_from_a_command_line() -> None:
    name = unique_name()
    out, _ = run(
        "add_tool_server",
        name,
        "--command",
        f"{sys.executable} -m tests.support.mcp_servers stdio",
        "--env",
        f"CHILD_TOKEN={TOKEN_ENV}",
    )

    server = ToolServer.objects.get(name=name)
    assert (server.transport, server.command, server.args) == (
        "stdio",
        sys.executable,
        ["-m", "tests.support.mcp_servers", "stdio"],
    )
    assert server.env_from_env == {"CHILD_TOKEN": TOKEN_ENV}
    assert f"{name}.forecast" in out
    assert Tool.objects.filter(server=server).count() == len(TOOL_NAMES)


def test_a_server_that_cannot_be_reached_stays_registered_and_the_command_fails() -> None:
    name = unique_name()
    with pytest.raises(CommandError) as caught:
        run("add_tool_server", name, "--url", f"http://127.0.0.1:{free_port()}/mcp")
    assert f"refresh_tools {name}" in str(caught.value)
    server = ToolServer.objects.get(name=name)
    assert "ConnectError" in server.last_error


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["Bad Name", "--url", "http://x/mcp"], "lower-case"),
        (["ok", "--url", "http://x/mcp", "--header", "Authorization"], "HEADER=ENV_VAR"),
        (["ok", "--url", "http://x/mcp", "--env", "A=B"], "--env is for stdio"),
        (["ok", "--command", "python", "--header", "A=B"], "--header is for HTTP"),
        (["ok", "--command", "python 'unclosed"], "--command"),
        (["ok", "--url", "ftp://x/mcp"], "http"),
    ],
)
def test_bad_arguments_are_refused_and_register_nothing(args: list[str], fragment: str) -> None:
    with pytest.raises(CommandError) as caught:
        run("add_tool_server", *args)
    assert fragment in str(caught.value)
    assert not ToolServer.objects.exists()


def test_a_taken_name_is_refused() -> None:
    server = register_http("http://127.0.0.1:9/mcp", refresh=False)
    with pytest.raises(CommandError) as caught:
        run("add_tool_server", server.name, "--url", "http://127.0.0.1:9/mcp")
    assert "exists already" in str(caught.value)


def test_refresh_tools_refreshes_the_named_servers_or_every_enabled_one() -> None:
    first = register_http(shared_http_server().url, refresh=False)
    second = register_http(shared_http_server().url, refresh=False)

    out, _ = run("refresh_tools", first.name)
    assert f"{first.name}: {len(TOOL_NAMES)} tool(s); added {len(TOOL_NAMES)}" in out
    assert not Tool.objects.filter(server=second).exists()

    out, _ = run("refresh_tools")
    assert f"{first.name}: {len(TOOL_NAMES)} tool(s); added 0" in out
    assert Tool.objects.filter(server=second).count() == len(TOOL_NAMES)


def test_refresh_tools_fails_when_a_server_does_and_names_unknown_ones() -> None:
    down = register_http(f"http://127.0.0.1:{free_port()}/mcp", refresh=False)
    with pytest.raises(CommandError) as caught:
        run("refresh_tools", down.name)
    assert "1 of 1" in str(caught.value)
    with pytest.raises(CommandError) as caught:
        run("refresh_tools", "nobody")
    assert "nobody" in str(caught.value)
