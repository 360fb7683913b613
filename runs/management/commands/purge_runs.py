"""`manage.py purge_runs [--older-than-days N]`: delete finished runs past the retention, with progress."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from runs.services import retention_cutoff, runs_purge


class Command(BaseCommand):
    help = (
        "Delete finished runs (with their step runs and approvals) that ended more than "
        "ORDINAUT_RUN_RETENTION_DAYS ago, keeping each task's newest run. Beat runs it daily."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-days",
            type=int,
            default=None,
            help="Override ORDINAUT_RUN_RETENTION_DAYS for this run (at least 1).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than_days"]
        if days is not None and days < 1:
            raise CommandError("--older-than-days must be 1 or more.")
        before = retention_cutoff(days=days)
        if before is None:
            self.stdout.write("ORDINAUT_RUN_RETENTION_DAYS is 0: every run is kept. Nothing deleted.")
            return
        self.stdout.write(f"Deleting finished runs that ended before {before.isoformat(timespec='seconds')}...")
        deleted = runs_purge(before=before, progress=lambda n: self.stdout.write(f"  {n} deleted so far"))
        self.stdout.write(f"Deleted {deleted} run(s).")
