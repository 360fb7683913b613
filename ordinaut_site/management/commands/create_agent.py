"""`manage.py create_agent NAME --scopes a,b [--admin]`: create an agent and print its token last."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError
from ordinaut_site.models import ALL_SCOPES
from ordinaut_site.services import agent_create, token_issue


class Command(BaseCommand):
    help = "Create an agent with the given scopes and print its new API token (alone, on the last line)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="Unique agent name.")
        parser.add_argument(
            "--scopes",
            default="",
            help=f"Comma-separated scopes. Known: {', '.join(ALL_SCOPES)}.",
        )
        parser.add_argument("--admin", action="store_true", help="Grant every scope, including admin.")
        parser.add_argument("--contact", default="", help="Who owns this agent (email, team).")

    def handle(self, *args: Any, **options: Any) -> None:
        scopes = [s.strip() for s in options["scopes"].split(",") if s.strip()]
        if not scopes and not options["admin"]:
            raise CommandError("Give --scopes tasks:read,tasks:write,... or --admin.")
        actor = Actor.system("manage.py create_agent")
        try:
            agent = agent_create(
                name=options["name"], scopes=scopes, admin=options["admin"], contact=options["contact"], actor=actor
            )
            _, raw = token_issue(agent=agent, actor=actor, label="create_agent")
        except OrdinautError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(f"Created agent {agent.name} ({agent.pk}) with scopes: {', '.join(agent.scopes)}")
        self.stderr.write("The token below is shown once; store it now.")
        self.stdout.write(raw)
