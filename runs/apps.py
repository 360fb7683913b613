"""App config for runs: what happened (runs, step runs, approvals)."""

from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    verbose_name = "Runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import mcp_tools  # noqa: F401 - registers the runs and approvals tools on /mcp
