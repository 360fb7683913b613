"""Admin for tasks (schedule text, next fire times, run now/pause/resume/snooze), events (read-only)
and beat rows: django-celery-beat's pages, where the rows of Ordinaut tasks (PeriodicTask and its
crontab, interval, clocked and RRULE rows) are read-only and link to their task, because the task
is their truth (tasks/beat.py rewrites them from it). Other beat rows stay editable."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import (
    ClockedScheduleAdmin,
    CrontabScheduleAdmin,
    IntervalScheduleAdmin,
    PeriodicTaskAdmin,
)
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError, ValidationFailed
from pipelines.spec import payload_validate
from runs.selectors import run_stats

from . import selectors, services
from .models import Event, RRuleSchedule, Task
from .schedules import describe, schedule_validate

EDITABLE = [
    "title",
    "description",
    "owner",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "priority",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_max_seconds",
    "timeout_seconds",
    "catchup_window_seconds",
    "overlap",
    "jitter_seconds",
    "condition",
]
ADMIN_SNOOZE_S = 3600


class TaskAdminForm(forms.ModelForm):
    class Meta:
        model = Task
        fields = EDITABLE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        try:
            data["payload"] = payload_validate(data.get("payload"))
            data["schedule_expr"] = schedule_validate(
                kind=data.get("schedule_kind", ""),
                expr=data.get("schedule_expr", ""),
                tz=data.get("timezone", ""),
                now=timezone.now(),
            )
        except ValidationFailed as exc:
            for field, problems in exc.fields.items():
                name = field.split(".")[0]
                self.add_error(name if name in self.fields else None, "; ".join(problems))
        return data


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    form = TaskAdminForm
    list_display = [
        "title",
        "owner",
        "status",
        "schedule_kind",
        "schedule_text",
        "next_run_at",
        "last_run_at",
        "parked",
    ]
    list_filter = ["status", "schedule_kind", "overlap", ("schedule_parked_at", admin.EmptyFieldListFilter)]
    search_fields = ["title", "description", "owner__name"]
    readonly_fields = [
        "id",
        "status",
        "schedule_text",
        "upcoming",
        "stats",
        "runs",
        "next_run_at",
        "last_run_at",
        "snoozed_until",
        "schedule_error",
        "schedule_parked_at",
        "created_at",
        "updated_at",
        "deleted_at",
    ]
    list_select_related = ["owner"]
    actions = ["run_now", "pause", "resume", "snooze_one_hour"]

    @admin.display(description="schedule")
    def schedule_text(self, task: Task) -> str:
        return describe(task.schedule_kind, task.schedule_expr, task.timezone)

    @admin.display(description="parked", boolean=True)
    def parked(self, task: Task) -> bool:
        return task.schedule_parked_at is not None

    @admin.display(description="next fire times")
    def upcoming(self, task: Task) -> str:
        rows = selectors.task_next_runs(task=task, count=5)
        if not rows:
            return "-"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{} ({}){}</li>",
                ((row["at"], row["utc"], " skipped: snoozed" if row.get("skipped") else "") for row in rows),
            ),
        )

    @admin.display(description="runs")
    def runs(self, task: Task) -> str:
        if task._state.adding:
            return "-"
        url = f"{reverse('admin:runs_run_changelist')}?task__id__exact={task.pk}"
        return format_html('<a href="{}">All runs of this task</a>', url)

    @admin.display(description="run statistics")
    def stats(self, task: Task) -> str:
        if task._state.adding:
            return "-"
        stats = run_stats(agent=None, task_id=task.pk)
        if not stats["total"]:
            return "no runs yet"
        rate = stats["success_rate"]
        failure = stats["last_failure"]
        lines = [
            ("runs", f"{stats['total']}: " + ", ".join(f"{n} {s}" for s, n in stats["by_status"].items() if n)),
            ("triggers", ", ".join(f"{n} {t}" for t, n in stats["by_trigger"].items() if n)),
            ("success rate", "-" if rate is None else f"{rate:.1%}"),
            ("duration p50 / p95", _percentiles(stats["duration_seconds"])),
            ("lateness p50 / p95", _percentiles(stats["lateness_seconds"])),
            (
                "last failure",
                "-"
                if failure is None
                else format_html(
                    '<a href="{}">{}</a> at {} ({})',
                    reverse("admin:runs_run_change", args=[failure["run"]]),
                    failure["run"],
                    failure["finished_at"] or "-",
                    failure["code"] or "no code",
                ),
            ),
        ]
        return format_html("<ul>{}</ul>", format_html_join("", "<li>{}: {}</li>", lines))

    def save_model(self, request: HttpRequest, obj: Task, form: Any, change: bool) -> None:
        actor = Actor.of_user(request.user)
        fields = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        if change:
            original = Task.objects.get(pk=obj.pk)
            changed = {name: fields[name] for name in form.changed_data if name in fields and name != "owner"}
            services.task_update(task=original, actor=actor, fields=changed)
        else:
            owner = fields.pop("owner")
            created = services.task_create(owner=owner, actor=actor, fields=fields)
            obj.pk = created.pk

    def _each(self, request: HttpRequest, queryset: QuerySet[Task], verb: str, call: Any) -> None:
        actor = Actor.of_user(request.user)
        for task in queryset:
            try:
                result = call(task, actor)
            except OrdinautError as exc:
                messages.error(request, f"{task.title}: {exc.message}")
            else:
                messages.success(request, f"{task.title}: {verb}" + (f" ({result})" if result else ""))

    @admin.action(description="Run now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(
            request, queryset, "run queued", lambda task, actor: services.task_run_now(task=task, actor=actor).pk
        )

    @admin.action(description="Pause")
    def pause(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(request, queryset, "paused", lambda task, actor: services.task_pause(task=task, actor=actor) and "")

    @admin.action(description="Resume")
    def resume(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(
            request, queryset, "resumed", lambda task, actor: services.task_resume(task=task, actor=actor) and ""
        )

    @admin.action(description="Snooze the next run by one hour")
    def snooze_one_hour(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(
            request,
            queryset,
            "snoozed",
            lambda task, actor: (
                services.task_snooze(task=task, actor=actor, delay_seconds=ADMIN_SNOOZE_S, reason="admin").snoozed_until
            ),
        )


def _percentiles(values: dict[str, float | None]) -> str:
    return " / ".join("-" if value is None else f"{value:.3f} s" for value in values.values())


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """What was published, by whom, whether it reached the stream and the consumer. Events are
    facts: published through the API or by steps, never edited here."""

    list_display = ["topic", "publisher", "published_at", "hops", "stream_id", "consumed_at"]
    list_filter = ["hops", ("consumed_at", admin.EmptyFieldListFilter)]
    search_fields = ["=id", "topic", "publisher__name", "source"]
    date_hierarchy = "published_at"
    list_select_related = ["publisher"]
    readonly_fields = (
        "id",
        "topic",
        "payload",
        "source",
        "publisher",
        "hops",
        "emitted_by_run",
        "published_at",
        "stream_id",
        "consumed_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class RRuleScheduleInline(admin.StackedInline):
    model = RRuleSchedule
    can_delete = False
    extra = 0
    readonly_fields = ["rrule", "timezone"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # RRULE rows exist only for Ordinaut tasks, and are written from the task


def _task_link(task: Task | None) -> str:
    if task is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:tasks_task_change", args=[task.pk]), task.title)


class OwnedByTaskAdmin(admin.ModelAdmin):
    """A beat-row admin that refuses changes and deletions of the rows an Ordinaut task owns
    (a POST to their change form is answered 403), shows the task and links to it."""

    owner_lookup: str  # how Task reaches this model

    def owning_task(self, obj: Any) -> Task | None:
        if obj is None or obj.pk is None:
            return None
        return Task.objects.filter(**{self.owner_lookup: obj}).first()

    @admin.display(description="Ordinaut task")
    def ordinaut_task_link(self, obj: Any) -> str:
        return _task_link(self.owning_task(obj))

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [*super().get_readonly_fields(request, obj), "ordinaut_task_link"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if self.owning_task(obj) is not None:
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if self.owning_task(obj) is not None:
            return False
        return super().has_delete_permission(request, obj)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        task = self.owning_task(self.get_object(request, object_id))
        if task is not None and request.method == "GET":
            messages.info(
                request,
                format_html(
                    "This row belongs to the Ordinaut task {} and is written from it: change the task instead.",
                    _task_link(task),
                ),
            )
        return super().change_view(request, object_id, form_url, extra_context)


class OwnedScheduleAdmin(OwnedByTaskAdmin):
    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        fields = list(super().get_fields(request, obj))
        if self.owning_task(obj) is not None and "ordinaut_task_link" not in fields:
            fields.insert(0, "ordinaut_task_link")
        return fields


for model in (PeriodicTask, CrontabSchedule, IntervalSchedule, ClockedSchedule):
    admin.site.unregister(model)


@admin.register(PeriodicTask)
class OrdinautPeriodicTaskAdmin(OwnedByTaskAdmin, PeriodicTaskAdmin):
    """dcb's admin, plus the RRULE of RRULE tasks and a link to the task; rows of Ordinaut tasks
    are edited on the Task. The bulk actions leave those rows alone too."""

    owner_lookup = "periodic_task"
    inlines = [RRuleScheduleInline]
    list_display = (*PeriodicTaskAdmin.list_display, "ordinaut_task_link")

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        return super().get_queryset(request).select_related("ordinaut_task")

    def owning_task(self, obj: Any) -> Task | None:
        if obj is None or obj.pk is None:
            return None
        return getattr(obj, "ordinaut_task", None)  # reverse one-to-one: absent for other rows

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if self.owning_task(obj) is not None:
            fieldsets.insert(0, ("Ordinaut", {"fields": ["ordinaut_task_link"]}))
        return fieldsets

    def _foreign_only(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> QuerySet[PeriodicTask]:
        owned = queryset.filter(ordinaut_task__isnull=False).count()
        if owned:
            messages.warning(request, f"{owned} row(s) of Ordinaut tasks left as they are: act on the task instead.")
        return queryset.filter(ordinaut_task__isnull=True)

    @admin.action(description="Enable selected tasks")
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().enable_tasks(request, self._foreign_only(request, queryset))

    @admin.action(description="Disable selected tasks")
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().disable_tasks(request, self._foreign_only(request, queryset))

    @admin.action(description="Toggle activity of selected tasks")
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        super().toggle_tasks(request, self._foreign_only(request, queryset))

    @admin.action(description="Run selected tasks")
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        # An Ordinaut task runs by hand through the task's own "Run now" (a manual run).
        super().run_tasks(request, self._foreign_only(request, queryset))


@admin.register(CrontabSchedule)
class OrdinautCrontabScheduleAdmin(OwnedScheduleAdmin, CrontabScheduleAdmin):
    owner_lookup = "periodic_task__crontab"


@admin.register(IntervalSchedule)
class OrdinautIntervalScheduleAdmin(OwnedScheduleAdmin, IntervalScheduleAdmin):
    owner_lookup = "periodic_task__interval"


@admin.register(ClockedSchedule)
class OrdinautClockedScheduleAdmin(OwnedScheduleAdmin, ClockedScheduleAdmin):
    owner_lookup = "periodic_task__clocked"
