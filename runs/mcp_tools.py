"""The runs app's MCP tools: runs and approvals, as GET /runs, /runs/{id}/... and /approvals.

Registered on Ordinaut's MCP server when the app is ready; each tool needs the scope its REST twin
declares and answers what that endpoint answers.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from ordinaut_site.audit import Actor
from ordinaut_site.auth import view_scope
from ordinaut_site.mcp_server import (
    DEFAULT_PAGE,
    DESTRUCTIVE,
    READ_ONLY,
    WRITES,
    Comment,
    Limit,
    Offset,
    RunId,
    call,
    mcp,
    page,
    validated,
)
from ordinaut_site.models import Agent

from . import selectors as run_selectors
from . import services as run_services
from .api import (
    ApprovalListQuerySerializer,
    ApprovalSerializer,
    ApprovalViewSet,
    ApproveSerializer,
    RejectSerializer,
    ReplaySerializer,
    RunDetailSerializer,
    RunListQuerySerializer,
    RunSerializer,
    RunStatsQuerySerializer,
    RunStatsSerializer,
    RunViewSet,
)
from .models import Approval, Run


@mcp.tool(annotations=READ_ONLY)
async def list_runs(
    task_id: Annotated[uuid.UUID | None, Field(description="Only runs of this task.")] = None,
    status: Annotated[list[Run.Status] | None, Field(description="Only runs in one of these statuses.")] = None,
    trigger: Annotated[list[Run.Trigger] | None, Field(description="Only runs started by one of these.")] = None,
    since: Annotated[datetime | None, Field(description="Runs created at or after this time.")] = None,
    until: Annotated[datetime | None, Field(description="Runs created before this time.")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Runs of the calling agent's tasks (every run for admins), newest first, without steps (scope
    runs:read). Returns {count, next_offset, results: [run, ...]} as GET /runs lists them."""

    def work(agent: Agent) -> Any:
        query = validated(
            RunListQuerySerializer,
            {
                "task": task_id,
                "status": ",".join(status) if status else None,
                "trigger": ",".join(trigger) if trigger else None,
                "since": since,
                "until": until,
            },
        )
        runs = run_selectors.run_list(
            agent=agent,
            task_id=query.get("task"),
            status=query.get("status"),
            trigger=query.get("trigger"),
            since=query.get("since"),
            until=query.get("until"),
        )
        return page(runs, limit, offset, RunSerializer)

    return await call("list_runs", view_scope(RunViewSet, "list"), work)


@mcp.tool(annotations=READ_ONLY)
async def get_run(run_id: RunId) -> dict[str, Any]:
    """A run with its steps (input, output, error, timing of each) and approvals, as GET /runs/{id}
    returns it (scope runs:read)."""

    def work(agent: Agent) -> Any:
        return RunDetailSerializer(run_selectors.run_get(agent=agent, run_id=run_id)).data

    return await call("get_run", view_scope(RunViewSet, "retrieve"), work)


@mcp.tool(annotations=DESTRUCTIVE)
async def cancel_run(run_id: RunId) -> dict[str, Any]:
    """Cancel a queued, running or waiting run (scope runs:write); later steps never start. Returns
    the run with its steps."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        return RunDetailSerializer(run_services.run_cancel(run=run, actor=Actor.of_agent(agent))).data

    return await call("cancel_run", view_scope(RunViewSet, "cancel"), work, writes=True)


@mcp.tool(annotations=WRITES)
async def replay_run(
    run_id: RunId,
    start_from: Annotated[
        Literal["failed_step", "start"],
        Field(
            description="failed_step (reuse the outputs of the steps before the failed one) or start "
            "(run every step again). REST calls it `from`."
        ),
    ] = "failed_step",
) -> dict[str, Any]:
    """Run a failed or canceled run again as a new run, like POST /runs/{id}/replay (scope
    runs:write). Returns the new run (queued)."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = validated(ReplaySerializer, {"from": start_from})
        new_run = run_services.run_replay(run=run, from_=body["from"], actor=Actor.of_agent(agent))
        return RunSerializer(new_run).data

    return await call("replay_run", view_scope(RunViewSet, "replay"), work, writes=True)


@mcp.tool(annotations=WRITES)
async def approve_run(
    run_id: RunId,
    items: Annotated[
        list[Any] | None,
        Field(description="The items approved, picked from the approval's data (default: all of them)."),
    ] = None,
    comment: Comment = "",
) -> dict[str, Any]:
    """Approve what a run waiting for approval asks (status waiting_approval; see list_approvals),
    optionally only some of its items (scope runs:write). The pipeline goes on. Returns the run."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = validated(ApproveSerializer, {"items": items, "comment": comment})
        decided = run_services.approval_decide(
            run=run, approve=True, items=body.get("items"), comment=body["comment"], actor=Actor.of_agent(agent)
        )
        return RunDetailSerializer(decided).data

    return await call(
        "approve_run", view_scope(RunViewSet, "approve"), work, writes=True, json_arguments={"items": items}
    )


@mcp.tool(annotations=WRITES)
async def reject_run(run_id: RunId, comment: Comment = "") -> dict[str, Any]:
    """Reject what a run waiting for approval asks (scope runs:write). A decision, not an error:
    the approval step's output says rejected; later steps' `if` see it, and its on_reject (stop
    unless a later step tests the decision) decides whether the run goes on. Returns the run."""

    def work(agent: Agent) -> Any:
        run = run_selectors.run_get(agent=agent, run_id=run_id)
        body = validated(RejectSerializer, {"comment": comment})
        decided = run_services.approval_decide(
            run=run, approve=False, comment=body["comment"], actor=Actor.of_agent(agent)
        )
        return RunDetailSerializer(decided).data

    return await call("reject_run", view_scope(RunViewSet, "reject"), work, writes=True)


@mcp.tool(annotations=READ_ONLY)
async def list_approvals(
    status: Annotated[
        list[Approval.Status] | None, Field(description="Only these statuses (pending: waiting for a decision).")
    ] = None,
    run_id: Annotated[uuid.UUID | None, Field(description="Only the approvals of this run.")] = None,
    limit: Limit = DEFAULT_PAGE,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Approvals of the calling agent's runs, newest first, like GET /approvals (scope runs:read).
    Returns {count, next_offset, results: [{id, run, task, step_id, message, data, status, ...}]}."""

    def work(agent: Agent) -> Any:
        query = validated(ApprovalListQuerySerializer, {"status": ",".join(status) if status else None, "run": run_id})
        approvals = run_selectors.approval_list(agent=agent, status=query.get("status"), run_id=query.get("run"))
        return page(approvals, limit, offset, ApprovalSerializer)

    return await call("list_approvals", view_scope(ApprovalViewSet, "list"), work)


@mcp.tool(annotations=READ_ONLY)
async def run_stats(
    since: Annotated[datetime | None, Field(description="Runs created at or after this time.")] = None,
    until: Annotated[datetime | None, Field(description="Runs created before this time.")] = None,
    task_id: Annotated[uuid.UUID | None, Field(description="Only runs of this task.")] = None,
) -> dict[str, Any]:
    """Statistics of the calling agent's runs (every run for admins), like GET /runs/stats (scope
    runs:read): counts by status and trigger, success_rate, p50/p95 of duration_seconds and
    lateness_seconds, and last_failure {run, finished_at, code}."""

    def work(agent: Agent) -> Any:
        query = validated(RunStatsQuerySerializer, {"task": task_id, "since": since, "until": until})
        stats = run_selectors.run_stats(
            agent=agent, task_id=query.get("task"), since=query.get("since"), until=query.get("until")
        )
        return RunStatsSerializer(stats).data

    return await call("run_stats", view_scope(RunViewSet, "stats"), work)
