"""`manage.py demo_agent --token-file PATH`: the quick start's demo agent, with a stable token."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ordinaut_site.audit import Actor
from ordinaut_site.models import ALL_SCOPES, Agent
from ordinaut_site.services import agent_create, token_authenticate, token_issue

DEMO_AGENT_NAME = "demo"


class Command(BaseCommand):
    help = (
        "Ensure the demo agent exists (every scope) and print a working token on the last line. "
        "The token is kept in --token-file so restarts print the same one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--token-file", required=True, help="Where the demo token is kept (mode 0600).")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["token_file"])
        actor = Actor.system("quick start")
        if path.exists():
            found = token_authenticate(path.read_text().strip())
            if found is not None and found[0].name == DEMO_AGENT_NAME:
                self.stdout.write(path.read_text().strip())
                return
        agent = Agent.objects.filter(name=DEMO_AGENT_NAME).first()
        if agent is None:
            agent = agent_create(
                name=DEMO_AGENT_NAME, scopes=list(ALL_SCOPES), admin=True, actor=actor, contact="quick start"
            )
        elif not agent.is_active:
            Agent.objects.filter(pk=agent.pk).update(is_active=True, deactivated_at=None)
        _, raw = token_issue(agent=agent, actor=actor, label="quick start")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(raw + "\n")
        self.stdout.write(raw)
