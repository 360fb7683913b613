"""The Celery application: configured from Django settings (namespace CELERY_), jobs autodiscovered."""

from __future__ import annotations

import os
import sys

from celery import Celery

from . import broker, multiproc

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")
# A prefork worker's pool processes count their metrics in files that its main process serves
# (ordinaut_site/multiproc.py); decided here, before Django's set-up imports prometheus_client.
multiproc.worker_dir_prepare(sys.argv)

# A worker that loses Redis while it holds unacknowledged messages reconnects instead of stopping
# (a guard on kombu's Redis transport), and its pool processes ignore the soft time limits of jobs
# that ended during the outage (connected on import of broker). Why: ordinaut_site/broker.py (R2).
broker.redis_transport_guard()

app = Celery("ordinaut_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Jobs live in each app's jobs.py (docs/architecture.md), not the default tasks.py.
app.autodiscover_tasks(related_name="jobs")

# Worker liveness (ordinaut_site/liveness.py): a heartbeat in Redis and the jobs in flight, so the
# sweeper re-runs a dead worker's steps within ORDINAUT_WORKER_DEAD_AFTER_S.
from .liveness import WorkerLiveness  # noqa: E402

app.steps["worker"].add(WorkerLiveness)
