"""`manage.py add_tool_server NAME --url URL | --command "CMD ARGS"`: register an MCP server, list its tools."""

from __future__ import annotations

import shlex
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError
from pipelines import services
from pipelines.models import ToolServer


def pairs(values: list[str], option: str, form: str) -> dict[str, str]:
    """["Authorization=MCP_TOKEN", ...] -> {"Authorization": "MCP_TOKEN"}."""
    mapping: dict[str, str] = {}
    for value in values:
        key, sep, variable = value.partition("=")
        if not sep or not key or not variable:
            raise CommandError(f"{option} takes {form} (the variable's name, not its value); got {value!r}")
        mapping[key.strip()] = variable.strip()
    return mapping


class Command(BaseCommand):
    help = (
        "Register an MCP tool server (streamable HTTP with --url, or stdio with --command), then list its "
        "tools into the catalog and print them. Secrets stay in the environment: --header and --env name "
        "the variables whose values are sent."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="The prefix steps use (`name.tool`): lower-case letters, digits, _ and -.")
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--url", help="Streamable HTTP endpoint, e.g. https://tools.example.com/mcp.")
        target.add_argument("--command", dest="server_command", help='stdio: the command line, e.g. "npx -y some-mcp".')
        parser.add_argument(
            "--header",
            action="append",
            default=[],
            metavar="HEADER=ENV_VAR",
            help="HTTP: send HEADER with the value of environment variable ENV_VAR (repeatable).",
        )
        parser.add_argument(
            "--env",
            action="append",
            default=[],
            metavar="CHILD_VAR=ENV_VAR",
            help="stdio: give the server CHILD_VAR with the value of ENV_VAR (repeatable).",
        )
        parser.add_argument("--timeout", type=float, default=30.0, help="Seconds a tools/list or a call may take.")
        parser.add_argument("--disabled", action="store_true", help="Register it disabled (its tools do not resolve).")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("manage.py add_tool_server")
        fields: dict[str, Any] = {
            "name": options["name"],
            "timeout_seconds": options["timeout"],
            "enabled": not options["disabled"],
        }
        if options["url"]:
            if options["env"]:
                raise CommandError("--env is for stdio servers (--command); HTTP servers take --header")
            fields |= {
                "transport": ToolServer.Transport.STREAMABLE_HTTP,
                "url": options["url"],
                "headers_from_env": pairs(options["header"], "--header", "HEADER=ENV_VAR"),
            }
        else:
            if options["header"]:
                raise CommandError("--header is for HTTP servers (--url); stdio servers take --env")
            try:
                command, *command_args = shlex.split(options["server_command"])
            except ValueError as exc:
                raise CommandError(f"--command: {exc}") from None
            fields |= {
                "transport": ToolServer.Transport.STDIO,
                "command": command,
                "args": command_args,
                "env_from_env": pairs(options["env"], "--env", "CHILD_VAR=ENV_VAR"),
            }
        try:
            server = services.tool_server_create(fields=services.tool_server_clean(**fields), actor=actor)
        except OrdinautError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"Registered tool server {server.name} ({server.transport}).")
        try:
            result = services.tool_server_refresh(server=server, actor=actor)
        except OrdinautError as exc:
            raise CommandError(
                f"{exc.message}\nThe server stays registered; fix it, then run: manage.py refresh_tools {server.name}"
            ) from None
        self.stderr.write(f"{len(result.tools)} tool(s) found:")
        for tool in result.tools:
            self.stdout.write(f"{tool.full_name}\t{tool.description.splitlines()[0] if tool.description else ''}")
        for note in result.skipped:
            self.stderr.write(f"skipped {note}")
