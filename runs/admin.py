"""Admin for runs (each run's steps as a timeline; cancel, replay) and approvals (approve, reject)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from ordinaut_site.errors import OrdinautError
from ordinaut_site.services import Actor

from . import services
from .models import Approval, Run, StepRun


class StepRunInline(admin.TabularInline):
    model = StepRun
    extra = 0
    can_delete = False
    readonly_fields = (
        "index",
        "step_id",
        "uses",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "duration_ms",
        "resume_at",
        "input",
        "output",
        "error",
        "attempt_history",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApprovalInline(admin.TabularInline):
    model = Approval
    extra = 0
    can_delete = False
    readonly_fields = ("step_id", "status", "message", "expires_at", "decided_at", "decided_by", "comment")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _each(request: HttpRequest, queryset: QuerySet[Any], verb: str, do: Any) -> None:
    """Apply a service to each selected row, reporting refusals (409s) as admin messages."""
    done = 0
    for obj in queryset:
        try:
            do(obj)
            done += 1
        except OrdinautError as exc:
            messages.warning(request, f"{obj}: {exc.message}")
    if done:
        messages.success(request, f"{verb} {done} item(s).")


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "trigger", "status", "scheduled_for", "created_at", "started_at", "finished_at"]
    list_filter = ["status", "trigger", "skip_reason"]
    search_fields = ["id", "task__title", "trigger_key"]
    date_hierarchy = "created_at"
    list_select_related = ["task"]
    inlines = [StepRunInline, ApprovalInline]
    actions = ["cancel_runs", "replay_from_failed_step", "replay_from_start"]
    readonly_fields = [
        "id",
        "task",
        "trigger",
        "trigger_key",
        "scheduled_for",
        "status",
        "skip_reason",
        "created_at",
        "started_at",
        "finished_at",
        "context",
        "pipeline",
        "error",
        "result",
        "replay_of",
        "jitter_seconds",
        "current_step",
        "dispatch_count",
        "deadline_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor = Actor.of_user(request.user)
        _each(request, queryset, "Canceled", lambda run: services.run_cancel(run=run, actor=actor))

    @admin.action(description="Replay from the failed step (earlier outputs reused)")
    def replay_from_failed_step(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor = Actor.of_user(request.user)
        _each(request, queryset, "Replayed", lambda run: services.run_replay(run=run, from_="failed_step", actor=actor))

    @admin.action(description="Replay from the start")
    def replay_from_start(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor = Actor.of_user(request.user)
        _each(request, queryset, "Replayed", lambda run: services.run_replay(run=run, from_="start", actor=actor))


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ["run", "step_id", "status", "message", "created_at", "expires_at", "decided_at"]
    list_filter = ["status"]
    search_fields = ["run__id", "step_id", "message"]
    list_select_related = ["run"]
    actions = ["approve_all_items", "reject"]
    readonly_fields = [
        "id",
        "run",
        "step_index",
        "step_id",
        "message",
        "data",
        "status",
        "created_at",
        "expires_at",
        "decided_at",
        "decided_by",
        "comment",
        "approved_items",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Approve (all items)")
    def approve_all_items(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        actor = Actor.of_user(request.user)
        _each(
            request,
            queryset.filter(status=Approval.Status.PENDING),
            "Approved",
            lambda approval: services.approval_decide(run=approval.run, approve=True, actor=actor),
        )

    @admin.action(description="Reject")
    def reject(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        actor = Actor.of_user(request.user)
        _each(
            request,
            queryset.filter(status=Approval.Status.PENDING),
            "Rejected",
            lambda approval: services.approval_decide(run=approval.run, approve=False, actor=actor),
        )
