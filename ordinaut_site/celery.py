"""The Celery application: configured from Django settings (namespace CELERY_), jobs autodiscovered."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")

app = Celery("ordinaut_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Jobs live in each app's jobs.py (docs/architecture.md), not the default tasks.py.
app.autodiscover_tasks(related_name="jobs")

# Worker liveness (ordinaut_site/liveness.py): a heartbeat in Redis and the jobs in flight, so the
# sweeper re-runs a dead worker's steps within ORDINAUT_WORKER_DEAD_AFTER_S.
from .liveness import WorkerLiveness  # noqa: E402

app.steps["worker"].add(WorkerLiveness)
