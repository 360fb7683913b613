"""Admin for tasks: schedule, policies and the run-now action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from ordinaut_site.errors import OrdinautError
from ordinaut_site.services import Actor

from . import services
from .models import Task


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "owner",
        "status",
        "schedule_kind",
        "schedule_expr",
        "timezone",
        "next_run_at",
        "last_run_at",
    ]
    list_filter = ["status", "schedule_kind", "overlap"]
    search_fields = ["title", "description", "owner__name"]
    readonly_fields = ["id", "next_run_at", "last_run_at", "snoozed_until", "created_at", "updated_at", "deleted_at"]
    actions = ["run_now"]

    @admin.action(description="Run now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        for task in queryset:
            try:
                run = services.task_run_now(task=task, actor=Actor.of_user(request.user))
            except OrdinautError as exc:
                messages.error(request, f"{task.title}: {exc.message}")
            else:
                messages.success(request, f"{task.title}: run {run.pk} queued")
