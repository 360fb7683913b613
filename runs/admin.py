"""Admin for runs, with each run's steps as a timeline."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from .models import Run, StepRun


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
        "input",
        "output",
        "error",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "trigger", "status", "scheduled_for", "created_at", "started_at", "finished_at"]
    list_filter = ["status", "trigger", "skip_reason"]
    search_fields = ["id", "task__title", "trigger_key"]
    date_hierarchy = "created_at"
    list_select_related = ["task"]
    inlines = [StepRunInline]
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
