"""The Celery application: configured from Django settings (namespace CELERY_), jobs autodiscovered."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordinaut_site.settings")

app = Celery("ordinaut_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Jobs live in each app's jobs.py (docs/architecture.md), not the default tasks.py.
app.autodiscover_tasks(related_name="jobs")
