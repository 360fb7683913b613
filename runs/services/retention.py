"""Run retention: finished runs (with their step runs and approvals) older than
ORDINAUT_RUN_RETENTION_DAYS are deleted, in batches, the newest run of each task always kept (a
task's `condition` reads its last run). The audit log is never purged."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone

from ..models import Run

RETENTION_BATCH = 1000


def retention_cutoff(*, now: datetime | None = None, days: int | None = None) -> datetime | None:
    """Runs that ended before this go; None when retention is off (0 days)."""
    keep_days = settings.ORDINAUT_RUN_RETENTION_DAYS if days is None else days
    if keep_days <= 0:
        return None
    return (now or timezone.now()) - timedelta(days=keep_days)


def runs_purge(*, before: datetime, batch: int = RETENTION_BATCH, progress: Callable[[int], None] | None = None) -> int:
    """Delete terminal runs that ended (or, skipped, were created) before `before`, except each
    task's newest run; in transactions of at most `batch` runs. Returns how many were deleted."""
    newest_of_task = Run.objects.filter(task=OuterRef("task")).order_by("-created_at").values("pk")[:1]
    old = (
        Run.objects.filter(status__in=Run.TERMINAL)
        .filter(Q(finished_at__lt=before) | Q(finished_at__isnull=True, created_at__lt=before))
        .exclude(pk=Subquery(newest_of_task))
    )
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(old.order_by("created_at").values_list("pk", flat=True)[:batch])
            if not ids:
                return deleted
            Run.objects.filter(pk__in=ids).delete()  # step runs and approvals cascade
        deleted += len(ids)
        if progress is not None:
            progress(deleted)
