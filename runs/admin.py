"""Admin for runs (named by their task; each run's steps as a timeline, a foreach step's items
within it; cancel, replay), foreach items (read-only) and approvals (pending first; approve all or
chosen items with a comment, reject with or without one)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.db.models import Case, Count, F, IntegerField, Prefetch, QuerySet, Value, When
from django.db.models.expressions import Combinable
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ordinaut_site.admin_display import (
    EMPTY,
    RecordAdmin,
    age_text,
    counts_text,
    duration_text,
    json_block,
    json_field,
    moment_text,
    plural,
    when,
)
from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError, ValidationFailed

from . import services
from .models import Approval, Run, StepItem, StepRun

# The run page lists this many items of each foreach step; the items list has them all.
ITEMS_SHOWN = 100
# The approvals list shows this much of each message (the approval's page shows it whole).
MESSAGE_LIST_CHARS = 160
STATUS_ORDER = ("succeeded", "failed", "running", "pending", "skipped")
# What a list never shows, so it is never loaded for each row (a run copies its whole pipeline).
RUN_HEAVY = ("context", "pipeline", "result", "error")
TASK_HEAVY = ("payload", "description", "condition", "schedule_error")


def run_name(run: Run) -> str:
    """A run as operators name it: its task's title, trigger and when it was created."""
    return f"{run.task.title}, {run.trigger} run of {moment_text(run.created_at)}"


def run_link(run: Run, text: str | None = None) -> SafeString:
    return format_html('<a href="{}">{}</a>', reverse("admin:runs_run_change", args=[run.pk]), text or run_name(run))


def status_html(status: str, note: str = "") -> SafeString:
    return format_html(
        '<span class="status-{}">{}</span>{}',
        status,
        status.replace("_", " "),
        format_html('<span class="skip">{}</span>', note) if note else "",
    )


def _defer(prefix: str, names: Iterable[str]) -> list[str]:
    return [f"{prefix}{name}" for name in names]


def _each(request: HttpRequest, rows: Iterable[Any], do: Callable[[Any], Any], name: Callable[[Any], str]) -> list[Any]:
    """Apply a service to each selected row; a refusal (409) becomes a warning naming the row.
    Returns what each call that went through returned."""
    done = []
    for row in rows:
        try:
            done.append(do(row))
        except OrdinautError as exc:
            messages.warning(request, f"{name(row)}: {exc.message}")
    return done


def _report(request: HttpRequest, verb: str, count: int, noun: str, detail: str = "") -> None:
    if count:
        messages.success(request, f"{verb} {plural(count, noun)}{detail}.")


def decision_text(approval: Approval) -> SafeString | str:
    if approval.decided_at is None:
        return EMPTY
    by = approval.decided_by or {}
    who = by.get("name") or by.get("kind") or "the system"
    return format_html("{} by {} ({})", when(approval.decided_at), who, by.get("kind", "system"))


def _step_row(step: StepRun, counts: Counter[str] | None, shown: list[StepItem]) -> dict[str, Any]:
    error = step.error or {}
    row: dict[str, Any] = {
        "step": step,
        "started": when(step.started_at),
        "duration": duration_text(step.duration_ms),
        "resume_at": when(step.resume_at) if step.resume_at else "",
        "error_line": f"{error.get('code', 'error')}: {error.get('message', '')}" if step.error else "",
        "blocks": [
            json_block(value, label=label)
            for label, value in (
                ("input", step.input),
                ("output", step.output),
                ("error", step.error),
                ("attempts", step.attempt_history),
            )
            if value not in (None, [], {})
        ],
        "items": None,
    }
    if counts is not None:
        total = sum(counts.values())
        changelist = reverse("admin:runs_stepitem_changelist")
        row.update(
            items=[_item_row(item) for item in shown],
            items_summary=f"{plural(total, 'item')}: {counts_text(counts, STATUS_ORDER)}" if total else "no items",
            items_total=total,
            items_more=total > len(shown),
            items_url=f"{changelist}?step__id__exact={step.pk}",
            failed_url=f"{changelist}?step__id__exact={step.pk}&status__exact=failed" if counts["failed"] else "",
        )
    return row


def _item_row(item: StepItem) -> dict[str, Any]:
    error = item.error or {}
    return {
        "item": item,
        "started": when(item.started_at),
        "duration": duration_text(item.duration_ms),
        "error_line": f"{error.get('code', 'error')}: {error.get('message', '')}" if item.error else "",
        "blocks": [
            json_block(value, label=label)
            for label, value in (
                ("input", item.input),
                ("output", item.output),
                ("error", item.error),
                ("attempts", item.attempt_history),
            )
            if value not in (None, [], {})
        ],
    }


def step_timeline(run: Run) -> list[dict[str, Any]]:
    """The run's steps in order, each foreach step with its item counts by status and its first
    ITEMS_SHOWN items: three queries, whatever the number of steps and items."""
    steps = StepRun.objects.filter(run=run).order_by("index")
    steps = steps.prefetch_related(
        Prefetch(
            "items", queryset=StepItem.objects.filter(index__lt=ITEMS_SHOWN).order_by("index"), to_attr="shown_items"
        )
    )
    counts: dict[int, Counter[str]] = {}
    for row in StepItem.objects.filter(step__run=run).values("step_id", "status").annotate(n=Count("id")).order_by():
        counts.setdefault(row["step_id"], Counter())[row["status"]] = row["n"]
    foreach = {step["id"] for step in run.pipeline if isinstance(step, dict) and "foreach" in step}
    timeline = []
    for step in steps:
        step_counts = counts.get(step.pk)
        if step_counts is None and step.step_id in foreach and step.status != StepRun.Status.PENDING:
            step_counts = Counter()  # a foreach over an empty list
        timeline.append(_step_row(step, step_counts, getattr(step, "shown_items", [])))
    return timeline


class SkipReasonFilter(admin.SimpleListFilter):
    """The reasons skipped runs were skipped for, as recorded: listing them reads only the skipped
    runs (through the status index), not every run's reason."""

    title = "skip reason"
    parameter_name = "skip_reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        skipped = Run.objects.filter(status=Run.Status.SKIPPED).exclude(skip_reason="")
        return [(reason, reason) for reason in skipped.values_list("skip_reason", flat=True).distinct().order_by()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        return queryset.filter(skip_reason=self.value()) if self.value() else queryset


@admin.register(Run)
class RunAdmin(RecordAdmin):
    list_display = ["task_title", "trigger", "status_text", "scheduled", "started", "duration"]
    list_filter = ["status", "trigger", ("created_at", admin.DateFieldListFilter), SkipReasonFilter]
    search_fields = ["=id", "task__title", "=trigger_key"]
    list_select_related = ["task"]
    list_defer = (*RUN_HEAVY, *_defer("task__", TASK_HEAVY))
    actions = ["cancel_runs", "replay_from_failed_step", "replay_from_start"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "task_link",
                    "trigger",
                    "status_text",
                    "scheduled",
                    "created",
                    "started",
                    "finished",
                    "duration",
                    "replay_of_link",
                ]
            },
        ),
        ("Data", {"fields": [json_field("context"), json_field("result"), json_field("error")]}),
        ("Pipeline", {"fields": [json_field("pipeline", description="steps")]}),
        (
            "Engine bookkeeping",
            {
                "classes": ["collapse"],
                "fields": ["id", "trigger_key", "jitter_seconds", "current_step", "dispatch_count", "deadline"],
            },
        ),
    ]

    def record_label(self, run: Run) -> str:
        return run_name(run)

    @admin.display(description="task", ordering="task__title")
    def task_title(self, run: Run) -> str:
        return run.task.title

    @admin.display(description="task")
    def task_link(self, run: Run) -> SafeString:
        url = reverse("admin:tasks_task_change", args=[run.task_id])
        return format_html('<a href="{}">{}</a>', url, run.task.title)

    @admin.display(description="status", ordering="status")
    def status_text(self, run: Run) -> SafeString:
        return status_html(run.status, run.skip_reason)

    @admin.display(description="scheduled for", ordering="scheduled_for")
    def scheduled(self, run: Run) -> SafeString | str:
        return when(run.scheduled_for)

    @admin.display(description="created", ordering="created_at")
    def created(self, run: Run) -> SafeString | str:
        return when(run.created_at)

    @admin.display(description="started", ordering="started_at")
    def started(self, run: Run) -> SafeString | str:
        return when(run.started_at)

    @admin.display(description="finished", ordering="finished_at")
    def finished(self, run: Run) -> SafeString | str:
        return when(run.finished_at)

    @admin.display(description="deadline")
    def deadline(self, run: Run) -> SafeString | str:
        return when(run.deadline_at)

    @admin.display(description="duration")
    def duration(self, run: Run) -> str:
        if run.started_at is None or run.finished_at is None:
            return EMPTY
        return duration_text((run.finished_at - run.started_at).total_seconds() * 1000)

    @admin.display(description="replay of")
    def replay_of_link(self, run: Run) -> SafeString | str:
        return run_link(run.replay_of) if run.replay_of_id and run.replay_of else EMPTY

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return super().get_queryset(request).select_related("task")

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        run = self.get_object(request, unquote(object_id))
        if run is not None:
            extra_context = {
                "title": run.task.title,
                "subtitle": f"{run.trigger} run, {run.status.replace('_', ' ')}, created {moment_text(run.created_at)}",
                "record_label": run_name(run),
                "steps": step_timeline(run),
                "approvals": [
                    {
                        "approval": approval,
                        "asked": when(approval.created_at),
                        "expires": when(approval.expires_at),
                        "decided": decision_text(approval),
                    }
                    for approval in run.approvals.order_by("step_index")
                ],
                **(extra_context or {}),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor = Actor.of_user(request.user)
        done = _each(request, queryset, lambda run: services.run_cancel(run=run, actor=actor), run_name)
        _report(request, "Canceled", len(done), "run")

    @admin.action(description="Replay from the failed step (earlier outputs reused)")
    def replay_from_failed_step(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._replay(request, queryset, "failed_step")

    @admin.action(description="Replay from the start")
    def replay_from_start(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._replay(request, queryset, "start")

    def _replay(self, request: HttpRequest, queryset: QuerySet[Run], from_: str) -> None:
        actor = Actor.of_user(request.user)
        done = _each(request, queryset, lambda run: services.run_replay(run=run, from_=from_, actor=actor), run_name)
        _report(request, "Replayed", len(done), "run")


@admin.register(StepItem)
class StepItemAdmin(RecordAdmin):
    """The items of foreach steps, one record each; the run page shows them in its timeline."""

    list_display = ["item_label", "status_text", "attempts", "started", "duration", "error_code", "run"]
    list_filter = ["status"]
    list_select_related = ["step__run__task"]
    list_defer = (
        "input",
        "output",
        "attempt_history",
        *_defer("step__", ("input", "output", "error", "attempt_history")),
        *_defer("step__run__", RUN_HEAVY),
        *_defer("step__run__task__", TASK_HEAVY),
    )
    fieldsets = [
        (None, {"fields": ["run", "step_text", "index", "status_text", "attempts", "started", "finished", "duration"]}),
        (
            "Data",
            {
                "fields": [
                    json_field("input"),
                    json_field("output"),
                    json_field("error"),
                    json_field("attempt_history", description="attempts"),
                ]
            },
        ),
        ("Engine bookkeeping", {"classes": ["collapse"], "fields": ["claim_id", "deadline_at"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[StepItem]:
        return super().get_queryset(request).select_related("step__run__task")

    def get_ordering(self, request: HttpRequest) -> list[str | Combinable]:
        # One step's items in their order; all items newest first (the primary key's index).
        return ["index"] if "step__id__exact" in request.GET else ["-pk"]

    def record_label(self, item: StepItem) -> str:
        return self.item_label(item)

    @admin.display(description="item")
    def item_label(self, item: StepItem) -> str:
        return f"{item.step.run.task.title} · {item.step.step_id} [{item.index}]"

    @admin.display(description="step")
    def step_text(self, item: StepItem) -> str:
        return f"{item.step.index}: {item.step.step_id} ({item.step.uses})"

    @admin.display(description="status", ordering="status")
    def status_text(self, item: StepItem) -> SafeString:
        return status_html(item.status, item.skip_reason)

    @admin.display(description="error")
    def error_code(self, item: StepItem) -> str:
        return str((item.error or {}).get("code", EMPTY))

    @admin.display(description="started", ordering="started_at")
    def started(self, item: StepItem) -> SafeString | str:
        return when(item.started_at)

    @admin.display(description="finished")
    def finished(self, item: StepItem) -> SafeString | str:
        return when(item.finished_at)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, item: StepItem) -> str:
        return duration_text(item.duration_ms)

    @admin.display(description="run")
    def run(self, item: StepItem) -> SafeString:
        return run_link(item.step.run)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        item = self.get_object(request, unquote(object_id))
        if item is not None:
            label = f"{item.step.step_id} [{item.index}]"
            extra_context = {
                "title": item.step.run.task.title,
                "subtitle": f"item {label}, {item.status}",
                "record_label": f"{run_name(item.step.run)}: {label}",
                **(extra_context or {}),
            }
        return super().change_view(request, object_id, form_url, extra_context)


APPROVE_ITEMS_TEMPLATE = "admin/runs/approval/approve_items.html"
REJECT_TEMPLATE = "admin/runs/approval/reject.html"
# Items are shown as JSON; a huge one is cut in the page (it is still approved whole).
ITEM_PREVIEW_CHARS = 2000
# Pending approvals first, the soonest to expire first; then the decided ones, newest first.
APPROVALS_ORDER: list[str | Combinable] = [
    Case(When(status=Approval.Status.PENDING, then=Value(0)), default=Value(1), output_field=IntegerField()).asc(),
    Case(When(status=Approval.Status.PENDING, then=F("expires_at"))).asc(),
    "-created_at",
]


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


def approval_name(approval: Approval) -> str:
    return f"{approval.run.task.title}, {approval.step_id}"


def _approved_report(request: HttpRequest, decided: list[tuple[int, int]]) -> None:
    """ "Approved 1 approval with 2 items (1 item not chosen)." from each approval's
    (items approved, items offered); an approval of no items counts no items."""
    approved = sum(chosen for chosen, _ in decided)
    offered = sum(total for _, total in decided)
    detail = ""
    if offered:
        detail = f" with {plural(approved, 'item')}"
        if offered > approved:
            detail += f" ({plural(offered - approved, 'item')} not chosen)"
    _report(request, "Approved", len(decided), "approval", detail)


@admin.register(Approval)
class ApprovalAdmin(RecordAdmin):
    """Approvals, pending ones first, each naming its task."""

    list_display = ["task_title", "message_text", "items", "age", "status_text", "expires", "run_link"]
    list_display_links = ["task_title"]
    list_filter = ["status"]
    search_fields = ["=run__id", "run__task__title", "step_id", "message"]
    # Each page's runs and tasks come in one more query (prefetch), not joined: sorting pending
    # first reads every approval, and joining each to its run before the sort cost ten times more.
    list_select_related = False
    ordering = APPROVALS_ORDER
    actions = ["approve_all_items", "approve_chosen_items", "reject", "reject_with_comment"]
    fieldsets = [
        (
            None,
            {"fields": ["run_named", "step_id", "status_text", "message", "asked", "expires", "decided", "comment"]},
        ),
        ("Items", {"fields": [json_field("data", description="asked about"), json_field("approved_items")]}),
        ("Record", {"classes": ["collapse"], "fields": ["id", "step_index", json_field("decided_by")]}),
    ]

    def record_label(self, approval: Approval) -> str:
        return approval_name(approval)

    @admin.display(description="task", ordering="run__task__title")
    def task_title(self, approval: Approval) -> str:
        return approval.run.task.title

    @admin.display(description="message")
    def message_text(self, approval: Approval) -> str:
        message = approval.message
        return message if len(message) <= MESSAGE_LIST_CHARS else message[: MESSAGE_LIST_CHARS - 1] + "…"

    @admin.display(description="items")
    def items(self, approval: Approval) -> str:
        offered = len(services.approval_items(approval=approval))
        if approval.status == Approval.Status.APPROVED and approval.approved_items is not None:
            return f"{len(approval.approved_items)} of {offered}"
        return str(offered)

    @admin.display(description="age", ordering="created_at")
    def age(self, approval: Approval) -> SafeString:
        return format_html('<span title="{}">{}</span>', approval.created_at.isoformat(), age_text(approval.created_at))

    @admin.display(description="status", ordering="status")
    def status_text(self, approval: Approval) -> SafeString:
        return status_html(approval.status)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, approval: Approval) -> SafeString | str:
        return when(approval.expires_at) if approval.status == Approval.Status.PENDING else EMPTY

    @admin.display(description="asked")
    def asked(self, approval: Approval) -> SafeString | str:
        return when(approval.created_at)

    @admin.display(description="decided")
    def decided(self, approval: Approval) -> SafeString | str:
        return decision_text(approval)

    @admin.display(description="run")
    def run_link(self, approval: Approval) -> SafeString:
        return run_link(approval.run, f"{approval.run.trigger} run")

    @admin.display(description="run")
    def run_named(self, approval: Approval) -> SafeString:
        return run_link(approval.run)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Approval]:
        runs = Run.objects.select_related("task").defer(*RUN_HEAVY, *_defer("task__", TASK_HEAVY))
        return super().get_queryset(request).prefetch_related(Prefetch("run", queryset=runs))

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        approval = self.get_object(request, unquote(object_id))
        if approval is not None:
            extra_context = {
                "title": approval.run.task.title,
                "subtitle": f"approval {approval.step_id}, {approval.status}",
                "record_label": approval_name(approval),
                **(extra_context or {}),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.action(description="Approve (all items)")
    def approve_all_items(self, request: HttpRequest, queryset: QuerySet[Approval]) -> None:
        actor = Actor.of_user(request.user)

        def approve(approval: Approval) -> tuple[int, int]:
            services.approval_decide(run=approval.run, approve=True, actor=actor)
            offered = len(services.approval_items(approval=approval))
            return offered, offered

        pending = queryset.filter(status=Approval.Status.PENDING)
        _approved_report(request, _each(request, pending, approve, approval_name))

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

            def decide(approval: Approval) -> tuple[int, int]:
                items = _chosen_items(request, approval) if approve else None
                services.approval_decide(run=approval.run, approve=approve, actor=actor, items=items, comment=comment)
                return len(items or []), len(services.approval_items(approval=approval))

            decided = _each(request, pending, decide, approval_name)
            if approve:
                _approved_report(request, decided)
            else:
                _report(request, "Rejected", len(decided), "approval", " with the comment" if comment else "")
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
        pending = queryset.filter(status=Approval.Status.PENDING)
        decided = _each(
            request,
            pending,
            lambda approval: services.approval_decide(run=approval.run, approve=False, actor=actor),
            approval_name,
        )
        _report(request, "Rejected", len(decided), "approval")

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
