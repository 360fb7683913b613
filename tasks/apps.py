"""App config for tasks: what to run and when."""

from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ordinaut_site.health import register_check

        from . import (
            health,
            mcp_tools,  # noqa: F401 - registers the task, schedule and event tools on /mcp
            receivers,  # noqa: F401 - connects the owner-change and run-finished receivers
            tools,  # noqa: F401 - registers orchestrator.emit_event
        )

        register_check("events_consumer", health.check_events_consumer)
        register_check("beat", health.check_beat)
