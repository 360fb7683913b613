"""`manage.py refresh_tools [NAME ...]`: list MCP servers' tools into the catalog now (default: every enabled one)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError
from pipelines import services
from pipelines.models import ToolServer


class Command(BaseCommand):
    help = "Refresh the tool catalog from the named MCP servers (default: every enabled one), as beat does hourly."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME", help="Tool server names (default: all enabled).")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = Actor.system("manage.py refresh_tools")
        names: list[str] = options["names"]
        servers = list(ToolServer.objects.filter(name__in=names) if names else ToolServer.objects.filter(enabled=True))
        unknown = sorted(set(names) - {server.name for server in servers})
        if unknown:
            raise CommandError(f"No tool server named {', '.join(unknown)}.")
        failed = 0
        for server in sorted(servers, key=lambda s: s.name):
            try:
                result = services.tool_server_refresh(server=server, actor=actor)
            except OrdinautError as exc:
                failed += 1
                self.stderr.write(exc.message)
                continue
            self.stdout.write(
                f"{server.name}: {len(result.tools)} tool(s); added {len(result.added)}, "
                f"removed {len(result.removed)}, changed {len(result.changed)}"
            )
        if failed:
            raise CommandError(f"{failed} of {len(servers)} server(s) could not be refreshed.")
