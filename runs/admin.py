"""Admin for runs (each run's steps as a timeline; cancel, replay) and approvals (approve all or
chosen items with a comment, reject)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html

from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError, ValidationFailed

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


def _each(request: HttpRequest, queryset: Iterable[Any], verb: str, do: Any, noun: str = "run") -> None:
    """Apply a service to each selected row, reporting refusals (409s) as admin messages and what
    was done as "Approved 2 approvals." (rows, named: not the items an approval holds)."""
    done = 0
    for obj in queryset:
        try:
            do(obj)
            done += 1
        except OrdinautError as exc:
            messages.warning(request, f"{obj}: {exc.message}")
    if done:
        messages.success(request, f"{verb} {done} {noun}{'' if done == 1 else 's'}.")


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

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: read it here, act on it with the actions (no Save buttons)

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


APPROVE_ITEMS_TEMPLATE = "admin/runs/approval/approve_items.html"
REJECT_TEMPLATE = "admin/runs/approval/reject.html"
# Items are shown as JSON; a huge one is cut in the page (it is still approved whole).
ITEM_PREVIEW_CHARS = 2000


class ApprovalCommentForm(forms.Form):
    """The comment of the approve-items page; the items are checkboxes, one group per approval."""

    comment = forms.CharField(
        required=False,
        max_length=Approval._meta.get_field("comment").max_length,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
    )


def _items_field(approval: Approval) -> str:
    return f"items_{approval.pk}"


def _chosen_items(request: HttpRequest, approval: Approval) -> list[Any]:
    """The items whose checkboxes were ticked for this approval (by position in its items)."""
    candidates = services.approval_items(approval=approval)
    chosen = []
    for raw in dict.fromkeys(request.POST.getlist(_items_field(approval))):  # a tick counts once
        if not raw.isdigit() or int(raw) >= len(candidates):
            raise ValidationFailed.on("items", f"{raw[:20]!r} is not one of the items this approval asked about")
        chosen.append(candidates[int(raw)])
    return chosen


def _item_rows(request: HttpRequest, approval: Approval, *, posted: bool) -> list[dict[str, Any]]:
    ticked = set(request.POST.getlist(_items_field(approval))) if posted else None
    rows = []
    for index, item in enumerate(services.approval_items(approval=approval)):
        text = json.dumps(item, indent=2, ensure_ascii=False, sort_keys=True)
        if len(text) > ITEM_PREVIEW_CHARS:
            text = text[:ITEM_PREVIEW_CHARS] + "\n…"
        rows.append({"index": index, "text": text, "checked": ticked is None or str(index) in ticked})
    return rows


@admin.register(Approval)
class ApprovalAdmin(admin.ModelAdmin):
    list_display = ["task_title", "status", "message", "step_id", "expires_at", "decided_at", "run_link"]
    list_filter = ["status"]
    search_fields = ["run__id", "run__task__title", "step_id", "message"]
    list_select_related = ["run", "run__task"]
    actions = ["approve_all_items", "approve_chosen_items", "reject", "reject_with_comment"]
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

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a record: read it here, act on it with the actions (no Save buttons)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="task", ordering="run__task__title")
    def task_title(self, approval: Approval) -> str:
        return approval.run.task.title

    @admin.display(description="run")
    def run_link(self, approval: Approval) -> str:
        url = reverse("admin:runs_run_change", args=[approval.run_id])
        return format_html('<a href="{}">{}</a>', url, approval.run.get_trigger_display())

    @admin.action(description="Approve (all items)")
    def approve_all_items(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        actor = Actor.of_user(request.user)
        _each(
            request,
            queryset.filter(status=Approval.Status.PENDING),
            "Approved",
            lambda approval: services.approval_decide(run=approval.run, approve=True, actor=actor),
            noun="approval",
        )

    def _decide_with_comment(
        self,
        request: HttpRequest,
        queryset: QuerySet[Approval],
        *,
        approve: bool,
        action: str,
        title: str,
        template: str,
    ) -> TemplateResponse | None:
        """An intermediate page, like the delete confirmation, with one optional comment recorded
        with each decision (and, approving, each approval's items as checkboxes, all ticked at
        first); confirming decides each through the same service as the API (audited as the user)."""
        pending = list(
            queryset.filter(status=Approval.Status.PENDING).select_related("run", "run__task").order_by("created_at")
        )
        if not pending:
            messages.warning(request, "None of the selected approvals is pending.")
            return None
        posted = request.POST.get("post") == "yes"
        form = ApprovalCommentForm(request.POST if posted else None)
        if posted and form.is_valid():
            actor = Actor.of_user(request.user)
            comment = form.cleaned_data["comment"]
            _each(
                request,
                pending,
                "Approved" if approve else "Rejected",
                lambda approval: services.approval_decide(
                    run=approval.run,
                    approve=approve,
                    actor=actor,
                    items=_chosen_items(request, approval) if approve else None,
                    comment=comment,
                ),
                noun="approval",
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.model._meta,
            "form": form,
            "approvals": [
                {
                    "approval": approval,
                    "field": _items_field(approval),
                    "items": _item_rows(request, approval, posted=posted) if approve else [],
                }
                for approval in pending
            ],
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "action": action,
            "media": self.media,
        }
        return TemplateResponse(request, template, context)

    @admin.action(description="Approve chosen items, with a comment…")
    def approve_chosen_items(self, request: HttpRequest, queryset: QuerySet[Approval]) -> TemplateResponse | None:
        """Each pending approval's items as checkboxes and one comment; the ticked items are approved."""
        return self._decide_with_comment(
            request,
            queryset,
            approve=True,
            action="approve_chosen_items",
            title="Approve chosen items",
            template=APPROVE_ITEMS_TEMPLATE,
        )

    @admin.action(description="Reject")
    def reject(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        actor = Actor.of_user(request.user)
        _each(
            request,
            queryset.filter(status=Approval.Status.PENDING),
            "Rejected",
            lambda approval: services.approval_decide(run=approval.run, approve=False, actor=actor),
            noun="approval",
        )

    @admin.action(description="Reject, with a comment…")
    def reject_with_comment(self, request: HttpRequest, queryset: QuerySet[Approval]) -> TemplateResponse | None:
        """One optional comment, recorded with each rejection (as approving chosen items records one)."""
        return self._decide_with_comment(
            request,
            queryset,
            approve=False,
            action="reject_with_comment",
            title="Reject, with a comment",
            template=REJECT_TEMPLATE,
        )
