"""App config for pipelines: specs, templates, tools (and the MCP tool catalog) and the step jobs."""

from django.apps import AppConfig


class PipelinesConfig(AppConfig):
    name = "pipelines"
    verbose_name = "Pipelines"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # MCP servers' tools resolve after the in-process ones (Python tools win a name clash).
        from .catalog import CATALOG
        from .tools import resolver_add

        resolver_add(CATALOG)

        from . import mcp_tools  # noqa: F401 - registers validate_pipeline and list_tools on /mcp
