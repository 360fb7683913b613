"""`manage.py consume_events`: the events process (deploy/Procfile `events`). Runs until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ordinaut_site import metrics
from tasks.event_consumer import EventConsumer


class Command(BaseCommand):
    help = (
        "Read the event stream (ORDINAUT_EVENT_STREAM) in the consumer group ORDINAUT_EVENT_GROUP and create "
        "the runs of the event tasks each event matches. Start several, on any hosts, to share the work."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", help="This consumer's name in the group (default: <hostname>-<pid>).")
        parser.add_argument("--batch", type=int, help="Entries read at once (default ORDINAUT_EVENT_BATCH).")
        parser.add_argument(
            "--claim-idle-ms",
            type=int,
            help="Claim other consumers' entries unacknowledged this long (default ORDINAUT_EVENT_CLAIM_IDLE_S).",
        )
        parser.add_argument("--iterations", type=int, help="Stop after this many reads (for tests and debugging).")

    def handle(self, *args: Any, **options: Any) -> None:
        consumer = EventConsumer(name=options["name"], batch=options["batch"], claim_idle_ms=options["claim_idle_ms"])
        metrics.serve("events", settings.ORDINAUT_METRICS_PORT_EVENTS)

        def stop(signum: int, frame: Any) -> None:
            self.stdout.write(f"events consumer {consumer.name}: {signal.Signals(signum).name}, stopping")
            consumer.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"events consumer {consumer.name} started on {consumer.stream} (group {consumer.group})")
        stats = consumer.run(iterations=options["iterations"])
        self.stdout.write(
            f"events consumer {consumer.name} stopped: {stats.delivered} event(s) delivered, {stats.runs} run(s)"
        )
