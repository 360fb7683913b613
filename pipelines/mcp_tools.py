"""The pipelines app's MCP tools: dry-run a pipeline (POST /pipelines/validate) and list the tools
steps can use (GET /tools). Registered on Ordinaut's MCP server when the app is ready."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from ordinaut_site.auth import view_scope
from ordinaut_site.mcp_server import DEFAULT_PAGE, READ_ONLY, Limit, Offset, call, mcp, page, validated
from ordinaut_site.models import Agent

from . import selectors
from .api import PAYLOAD_HELP, PipelineValidateView, ValidateRequestSerializer
from .dryrun import pipeline_dry_run
from .tools_api import ToolListQuerySerializer, ToolViewSet, tool_data


@mcp.tool(annotations=READ_ONLY)
async def validate_pipeline(
    payload: Annotated[dict[str, Any], Field(description=PAYLOAD_HELP)],
    params: Annotated[dict[str, Any] | None, Field(description="Merged over the payload's params.")] = None,
    step_outputs: Annotated[
        dict[str, Any] | None, Field(description="Fake outputs of upstream steps, by step id (others are null).")
    ] = None,
    event: Annotated[Any, Field(description="The event an event task would see.")] = None,
    timezone: Annotated[str | None, Field(description="Timezone of `now` (default: the server's).")] = None,
    now: Annotated[datetime | None, Field(description="The logical time (default: now).")] = None,
) -> dict[str, Any]:
    """Dry-run a pipeline without calling any tool, like POST /pipelines/validate (scope
    tasks:read). Returns {valid, errors: [{field, message}], warnings, steps: [{id, uses, tool_found,
    if_result, would_run, rendered_input, input_errors, unresolved_paths, errors}]}."""

    def work(agent: Agent) -> Any:
        body = {"payload": payload, "params": params, "step_outputs": step_outputs, "timezone": timezone, "now": now}
        data = validated(ValidateRequestSerializer, body)
        return pipeline_dry_run(
            payload=data["payload"],
            params=data.get("params"),
            step_outputs=data.get("step_outputs"),
            event=event,
            timezone_name=data.get("timezone"),
            now=data.get("now"),
        )

    free = {"payload": payload, "params": params, "step_outputs": step_outputs, "event": event}
    return await call("validate_pipeline", view_scope(PipelineValidateView), work, json_arguments=free)


@mcp.tool(annotations=READ_ONLY)
async def list_tools(
    server: Annotated[
        str | None, Field(description="Only this server's tools ('orchestrator' for the built-ins).")
    ] = None,
    search: Annotated[str | None, Field(description="Text in the name or description (case-insensitive).")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """The tools pipeline steps can use (`uses`: 'server.tool'), like GET /tools (scope tools:read):
    built-ins, Python tools and every enabled MCP server's catalog. Returns {count, next_offset,
    results: [{name, server, description, input_schema, output_schema, cost}]}."""

    def work(agent: Agent) -> Any:
        query = validated(ToolListQuerySerializer, {"server": server, "search": search})
        return page([tool_data(tool) for tool in selectors.catalog_tools(**query)], limit, offset)

    return await call("list_tools", view_scope(ToolViewSet, "list"), work)
