"""Celery jobs of pipelines: the periodic tool catalog refresh."""

from __future__ import annotations

from celery import shared_task

from ordinaut_site.audit import SYSTEM

from .services import tool_servers_refresh_all


@shared_task(name="pipelines.refresh_tool_servers", ignore_result=True)
def refresh_tool_servers_job() -> dict[str, str]:
    """Beat's periodic catalog refresh (ORDINAUT_TOOL_REFRESH_INTERVAL_S): every enabled server."""
    return tool_servers_refresh_all(actor=SYSTEM)
