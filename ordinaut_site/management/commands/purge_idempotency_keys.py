"""`manage.py purge_idempotency_keys`: delete Idempotency-Key records past ORDINAUT_IDEMPOTENCY_TTL_S."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from ordinaut_site.idempotency import purge_expired


class Command(BaseCommand):
    help = "Delete expired Idempotency-Key records (run it from cron or a scheduler, e.g. hourly)."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(f"Deleted {purge_expired()} expired idempotency record(s).")
