"""Admin for tasks (schedule text, next fire times, the last runs, run now/pause/resume/snooze),
events (read-only) and beat rows. django-celery-beat's pages are kept out of the operators' way
(not on the admin index; reachable by their addresses, and from each task's page): the rows of
Ordinaut tasks (PeriodicTask and its crontab, interval, clocked and RRULE rows) are read-only there
and link to their task, because the task is their truth (tasks/beat.py rewrites them from it)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_celery_beat.admin import (
    ClockedScheduleAdmin,
    CrontabScheduleAdmin,
    IntervalScheduleAdmin,
    PeriodicTaskAdmin,
    SolarScheduleAdmin,
)
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from ordinaut_site.admin_display import (
    EMPTY,
    OrdinautModelAdmin,
    RecordAdmin,
    duration_text,
    json_field,
    moment_text,
    plural,
    when,
)
from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError, ValidationFailed
from pipelines.spec import payload_validate
from runs.admin import RUN_HEAVY, TASK_HEAVY, run_link, status_html
from runs.models import Run
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
# The task page lists this many next occurrences and last runs.
NEXT_OCCURRENCES = 5
LAST_RUNS = 10
# The task form, grouped; every EDITABLE field is in one group (tests/admin/test_task_admin.py).
TASK_FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"fields": ["title", "description", "owner"]}),
    ("Schedule", {"fields": ["schedule_kind", "schedule_expr", "timezone", "condition"]}),
    ("Pipeline", {"fields": ["payload"]}),
    (
        "Retries and limits",
        {
            "fields": [
                "priority",
                "max_retries",
                "retry_backoff_seconds",
                "retry_backoff_max_seconds",
                "timeout_seconds",
                "catchup_window_seconds",
                "overlap",
                "jitter_seconds",
            ]
        },
    ),
]
# What the page of an existing task adds: its state, next occurrences and runs (read-only).
TASK_STATE_FIELDSETS: list[tuple[str | None, dict[str, Any]]] = [
    (
        "Now",
        {
            "fields": [
                "status_text",
                "schedule_text",
                "upcoming",
                "next_run",
                "last_run",
                "snoozed",
                "schedule_error",
                "parked_since",
            ]
        },
    ),
    ("Runs", {"fields": ["runs", "last_runs", "stats"]}),
]
TASK_RECORD_FIELDSET: tuple[str, dict[str, Any]] = (
    "Record",
    {"classes": ["collapse"], "fields": ["id", "created", "updated", "deleted", "beat_row"]},
)


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


class ParkedFilter(admin.EmptyFieldListFilter):
    """schedule_parked_at set or not, said as operators say it: parked (beat cannot evaluate the
    task's row, so it does not fire it) or not."""

    LABELS = {"Empty": "not parked", "Not empty": "parked (schedule error)"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.title = "parked"

    def choices(self, changelist: Any) -> Any:
        for choice in super().choices(changelist):
            yield {**choice, "display": self.LABELS.get(str(choice["display"]), choice["display"])}


def _when_column(field: str, description: str, *, ordering: bool = False) -> Any:
    """An admin column (or read-only field) showing the task's datetime `field` as when() does."""

    @admin.display(description=description, ordering=field if ordering else None)
    def column(self: Any, task: Task) -> SafeString | str:
        return when(getattr(task, field))

    return column


@admin.register(Task)
class TaskAdmin(OrdinautModelAdmin):
    form = TaskAdminForm
    list_display = ["title", "owner", "status_text", "schedule_text", "next_run", "last_run"]
    list_filter = ["status", "schedule_kind", "overlap", ("schedule_parked_at", ParkedFilter)]
    search_fields = ["title", "description", "owner__name"]
    readonly_fields = [
        "id",
        "status_text",
        "schedule_text",
        "upcoming",
        "stats",
        "runs",
        "last_runs",
        "next_run",
        "last_run",
        "snoozed",
        "schedule_error",
        "parked_since",
        "created",
        "updated",
        "deleted",
        "beat_row",
    ]
    list_select_related = ["owner"]
    show_full_result_count = False
    actions = ["run_now", "pause", "resume", "snooze_one_hour"]

    def get_fieldsets(self, request: HttpRequest, obj: Task | None = None) -> Any:
        if obj is None:
            return TASK_FIELDSETS
        return [TASK_FIELDSETS[0], *TASK_STATE_FIELDSETS, *TASK_FIELDSETS[1:], TASK_RECORD_FIELDSET]

    @admin.display(description="status", ordering="status")
    def status_text(self, task: Task) -> SafeString:
        if task.schedule_parked_at is not None:
            return status_html(task.status, "parked: its schedule cannot be evaluated")
        if task.snoozed_until is not None and task.snoozed_until > timezone.now():
            return status_html(task.status, f"snoozed until {moment_text(task.snoozed_until)}")
        return status_html(task.status)

    @admin.display(description="schedule")
    def schedule_text(self, task: Task) -> str:
        return describe(task.schedule_kind, task.schedule_expr, task.timezone)

    next_run = _when_column("next_run_at", "next run", ordering=True)
    last_run = _when_column("last_run_at", "last run", ordering=True)
    snoozed = _when_column("snoozed_until", "snoozed until")
    parked_since = _when_column("schedule_parked_at", "parked since")
    created = _when_column("created_at", "created")
    updated = _when_column("updated_at", "updated")
    deleted = _when_column("deleted_at", "deleted")

    @admin.display(description="next occurrences")
    def upcoming(self, task: Task) -> str:
        rows = selectors.task_next_runs(task=task, count=NEXT_OCCURRENCES)
        if not rows:
            return "none: " + ("the task is not active" if task.status != Task.Status.ACTIVE else "nothing scheduled")
        return format_html(
            '<ul class="upcoming">{}</ul>',
            format_html_join(
                "",
                '<li><time datetime="{}">{}</time> ({} UTC){}</li>',
                (
                    (
                        row["utc"],
                        row["at"].replace("T", " "),
                        row["utc"][11:19],
                        ", skipped: snoozed" if row.get("skipped") else "",
                    )
                    for row in rows
                ),
            ),
        )

    @admin.display(description="runs")
    def runs(self, task: Task) -> str:
        if task._state.adding:
            return EMPTY
        url = f"{reverse('admin:runs_run_changelist')}?task__id__exact={task.pk}"
        return format_html('<a href="{}">All runs of this task</a>', url)

    @admin.display(description="last runs")
    def last_runs(self, task: Task) -> str:
        if task._state.adding:
            return EMPTY
        runs = list(Run.objects.filter(task=task).defer(*RUN_HEAVY).order_by("-created_at", "-pk")[:LAST_RUNS])
        if not runs:
            return "no runs yet"
        lines = []
        for run in runs:
            took = (
                (run.finished_at - run.started_at).total_seconds() * 1000
                if run.started_at and run.finished_at
                else None
            )
            lines.append(
                (
                    run_link(run, moment_text(run.created_at)),
                    run.get_trigger_display(),
                    status_html(run.status, run.skip_reason),
                    duration_text(took),
                )
            )
        return format_html(
            '<table class="last-runs"><thead><tr><th>created</th><th>trigger</th><th>status</th><th>duration</th></tr>'
            "</thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", lines),
        )

    @admin.display(description="beat row")
    def beat_row(self, task: Task) -> str:
        if task.periodic_task_id is None:
            return "none (the task is not on beat's schedule)"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[task.periodic_task_id])
        return format_html(
            '<a href="{}">django-celery-beat row {}</a> (written from this task)', url, task.periodic_task_id
        )

    @admin.display(description="run statistics")
    def stats(self, task: Task) -> str:
        if task._state.adding:
            return EMPTY
        stats = run_stats(agent=None, task_id=task.pk)
        if not stats["total"]:
            return "no runs yet"
        rate = stats["success_rate"]
        failure = stats["last_failure"]
        failed_at = failure and failure["finished_at"]
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
                    '<a href="{}">{}</a> ({})',
                    reverse("admin:runs_run_change", args=[failure["run"]]),
                    moment_text(failed_at) if failed_at else "unfinished",
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
                messages.success(
                    request, format_html("{}: {}{}", task.title, verb, format_html(" ({})", result) if result else "")
                )

    @admin.action(description="Run now")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._each(
            request,
            queryset,
            "run queued",
            lambda task, actor: run_link(services.task_run_now(task=task, actor=actor), "see the run"),
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
            lambda task, actor: _snoozed_until(
                services.task_snooze(task=task, actor=actor, delay_seconds=ADMIN_SNOOZE_S, reason="admin")
            ),
        )


def _snoozed_until(task: Task) -> str:
    return f"until {moment_text(task.snoozed_until)}" if task.snoozed_until else ""


def _percentiles(values: dict[str, float | None]) -> str:
    return " / ".join("-" if value is None else f"{value:.3f} s" for value in values.values())


class EventOrigin(admin.SimpleListFilter):
    """From outside (published through the API) or emitted by a step: a filter with no query of
    its own (listing the distinct hop counts would read every event)."""

    title = "origin"
    parameter_name = "origin"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("outside", "published (API)"), ("step", "emitted by a step")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        if self.value() == "outside":
            return queryset.filter(hops=0)
        if self.value() == "step":
            return queryset.filter(hops__gt=0)
        return queryset


@admin.register(Event)
class EventAdmin(RecordAdmin):
    """What was published, by whom, whether it reached the stream and the consumer. Events are
    facts: published through the API or by steps, never edited here."""

    list_display = ["topic", "publisher", "published", "origin", "stream_id", "consumed"]
    list_filter = [
        EventOrigin,
        ("consumed_at", admin.EmptyFieldListFilter),
        ("published_at", admin.DateFieldListFilter),
    ]
    search_fields = ["=id", "topic", "publisher__name", "source"]
    list_select_related = ["publisher", "emitted_by_run__task"]
    list_defer = (
        "payload",
        *(f"emitted_by_run__{name}" for name in RUN_HEAVY),
        *(f"emitted_by_run__task__{name}" for name in TASK_HEAVY),
    )
    fields = (
        "id",
        "topic",
        json_field("payload"),
        "source",
        "publisher",
        "broadcast",
        "origin",
        "published",
        "stream_id",
        "consumed",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Event]:
        return super().get_queryset(request).select_related("publisher", "emitted_by_run__task")

    @admin.display(description="published", ordering="published_at")
    def published(self, event: Event) -> SafeString | str:
        return when(event.published_at)

    @admin.display(description="consumed", ordering="consumed_at")
    def consumed(self, event: Event) -> SafeString | str:
        return when(event.consumed_at)

    @admin.display(description="origin")
    def origin(self, event: Event) -> SafeString | str:
        if event.emitted_by_run_id is None or event.emitted_by_run is None:
            return "published" if event.hops == 0 else f"emitted ({plural(event.hops, 'hop')}; its run is gone)"
        return format_html(
            "emitted by {} ({})",
            run_link(event.emitted_by_run, event.emitted_by_run.task.title),
            plural(event.hops, "hop"),
        )


class RRuleScheduleInline(admin.StackedInline):
    model = RRuleSchedule
    can_delete = False
    extra = 0
    readonly_fields = ["rrule", "timezone"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # RRULE rows exist only for Ordinaut tasks, and are written from the task


class BeatInternalsAdmin(admin.ModelAdmin):
    """django-celery-beat's pages stay reachable (by address, and from a task's "beat row") but
    off the admin index and its sidebar: operators act on tasks, beat rows are written from them."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return False


def _task_link(task: Task | None) -> str:
    if task is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:tasks_task_change", args=[task.pk]), task.title)


class OwnedByTaskAdmin(BeatInternalsAdmin):
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


for model in (PeriodicTask, CrontabSchedule, IntervalSchedule, ClockedSchedule, SolarSchedule):
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
            rows = plural(owned, "row")
            messages.warning(request, f"{rows} of Ordinaut tasks left as they are: act on the task instead.")
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


@admin.register(SolarSchedule)
class OrdinautSolarScheduleAdmin(BeatInternalsAdmin, SolarScheduleAdmin):
    """Ordinaut tasks never use solar schedules; dcb's page, off the index like the others."""
