"""App config for Ordinaut's cross-cutting models: agents, tokens, audit log."""

from django.apps import AppConfig


class OrdinautConfig(AppConfig):
    name = "ordinaut_site"
    label = "ordinaut"
    verbose_name = "Ordinaut"
    default_auto_field = "django.db.models.BigAutoField"
