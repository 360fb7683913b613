"""App config for Ordinaut's cross-cutting models: agents, tokens, audit log."""

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class OrdinautConfig(AppConfig):
    name = "ordinaut_site"
    label = "ordinaut"
    verbose_name = "Ordinaut"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The request id travels with every Celery message this process sends (web and workers
        # alike), so the publishing side must connect its signal handler, not only the workers.
        from . import jobs  # noqa: F401

        # Each app's metrics module (as the admin finds admin.py): its receivers and scrape-time
        # sources register themselves, in every process, without this package importing the apps.
        autodiscover_modules("metrics")
