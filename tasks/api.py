"""Task endpoints of the agents' API: serializers and views (logic lives in services)."""

from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, views, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import UUID_LOOKUP, QueryParamsSerializer, error_responses
from ordinaut_site.audit import Actor
from ordinaut_site.auth import request_agent
from ordinaut_site.idempotency import idempotent
from ordinaut_site.models import SCOPE_TASKS_READ, SCOPE_TASKS_WRITE
from pipelines.api import PAYLOAD_HELP
from runs.api import RunSerializer, RunStatsSerializer
from runs.selectors import run_stats

from . import selectors, services
from .models import Task
from .schedules import PREVIEW_MAX, describe

# Describing a cron expression in words (cron_descriptor) costs more than the rest of a task's
# representation; cron and interval descriptions depend on their three arguments alone (an RRULE's
# may depend on today, through its default DTSTART), so those are kept.
_describe_pure = lru_cache(maxsize=4096)(describe)


def schedule_description(kind: str, expr: str, tz: str) -> str:
    if kind in (Task.Kind.CRON, Task.Kind.INTERVAL):
        return _describe_pure(kind, expr, tz)
    return describe(kind, expr, tz)


KIND_HELP = (
    "How the task is triggered: cron (schedule_expr '0 9 * * 1-5', names and @daily allowed), rrule "
    "(RFC 5545, 'FREQ=WEEKLY;BYDAY=MO;BYHOUR=9', optional DTSTART line), once (ISO 8601 time, naive = "
    "the task's timezone), interval (seconds or ISO 8601 duration 'PT15M', on a grid from the epoch), "
    "event (a topic, exact or glob 'email.*'), manual (empty; only run_now)."
)


# Unbound fields of a serializer class, copied for each of its instances (TaskSerializer.get_fields).
_FIELD_PROTOTYPES: dict[type[serializers.Serializer[Any]], dict[str, serializers.Field]] = {}


class AgentRefSerializer(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    name = serializers.CharField(read_only=True)


class TaskSerializer(serializers.ModelSerializer):
    # The help texts are what agents read: in /openapi.json and as the MCP tools' argument descriptions.
    title = serializers.CharField(min_length=1, max_length=200, help_text="A short name, 1..200 characters.")
    description = serializers.CharField(
        max_length=2000, required=False, allow_blank=True, help_text="Free text, up to 2000 characters."
    )
    schedule_expr = serializers.CharField(
        max_length=2000,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        help_text="The schedule in the syntax of schedule_kind (empty for manual).",
    )
    timezone = serializers.CharField(
        max_length=64,
        required=False,
        help_text=f"IANA timezone the schedule is read in (default {settings.TIME_ZONE}).",
    )
    payload = serializers.JSONField(help_text=PAYLOAD_HELP)
    priority = serializers.IntegerField(
        min_value=0, max_value=9, required=False, help_text="0 (lowest) to 9 (highest); default 5."
    )
    max_retries = serializers.IntegerField(
        min_value=0, max_value=20, required=False, help_text="Default retries of a failing step, 0..20."
    )
    retry_backoff_seconds = serializers.FloatField(
        min_value=0, max_value=3600, required=False, help_text="First retry delay in seconds, doubled each attempt."
    )
    retry_backoff_max_seconds = serializers.FloatField(
        min_value=0, max_value=3600, required=False, help_text="Longest retry delay in seconds."
    )
    timeout_seconds = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="Default step timeout in seconds (null: the server default).",
    )
    catchup_window_seconds = serializers.IntegerField(
        min_value=0,
        max_value=30 * 86400,
        required=False,
        help_text="After downtime, occurrences younger than this still run (default 300).",
    )
    jitter_seconds = serializers.IntegerField(
        min_value=0, max_value=3600, required=False, help_text="A random delay 0..N seconds before the first step."
    )
    condition = serializers.CharField(
        max_length=2000,
        required=False,
        allow_null=True,
        allow_blank=True,
        help_text="JMESPath over {task, event, last_run, now}; falsy skips the occurrence (null: none).",
    )
    created_by = AgentRefSerializer(source="owner", read_only=True)
    schedule_description = serializers.SerializerMethodField()
    schedule_error = serializers.CharField(
        read_only=True,
        allow_null=True,
        help_text="Why beat parked the task (its schedule could not be evaluated; it does not fire until "
        "the schedule is changed or fixed), or null.",
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "title",
            "description",
            "status",
            "schedule_kind",
            "schedule_expr",
            "timezone",
            "schedule_description",
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
            "next_run_at",
            "last_run_at",
            "snoozed_until",
            "schedule_error",
            "schedule_parked_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        extra_kwargs = {
            "schedule_kind": {"help_text": KIND_HELP},
            "overlap": {
                "help_text": "When the previous run is still active: skip (the default of clock schedules: a "
                "skipped run, reason overlap), queue (the default of event tasks: every event is processed, "
                "in publication order), allow or cancel_previous."
            },
        }
        read_only_fields = [
            "id",
            "status",
            "next_run_at",
            "last_run_at",
            "snoozed_until",
            "schedule_parked_at",
            "created_at",
            "updated_at",
        ]

    def get_fields(self) -> dict[str, serializers.Field]:
        # ModelSerializer builds its fields from the model's metadata for every serializer instance
        # (about a sixth of a POST /tasks' CPU, B4); the fields depend on the class alone, so they are
        # built once and each instance gets fresh copies (DRF copies declared fields the same way).
        prototype = _FIELD_PROTOTYPES.get(type(self))
        if prototype is None:
            prototype = _FIELD_PROTOTYPES.setdefault(type(self), super().get_fields())
        return {name: copy.deepcopy(field) for name, field in prototype.items()}

    def get_schedule_description(self, task: Task) -> str:
        return schedule_description(task.schedule_kind, task.schedule_expr, task.timezone)

    def validate_timeout_seconds(self, value: int | None) -> int | None:
        if value is not None and value > settings.ORDINAUT_MAX_STEP_TIMEOUT_S:
            raise serializers.ValidationError(f"must be at most {settings.ORDINAUT_MAX_STEP_TIMEOUT_S}")
        return value

    def validate_condition(self, value: str | None) -> str:
        return (value or "").strip()

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["condition"] = data["condition"] or None
        data["schedule_error"] = data["schedule_error"] or None
        return data


class RunNowSerializer(serializers.Serializer):
    params = serializers.DictField(required=False, default=dict)


class SnoozeSerializer(serializers.Serializer):
    delay_seconds = serializers.IntegerField(required=False, min_value=1, max_value=services.MAX_SNOOZE_S)
    until = serializers.DateTimeField(required=False)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("delay_seconds" in attrs) == ("until" in attrs):
            raise serializers.ValidationError({"delay_seconds": ["give exactly one of delay_seconds or until"]})
        return attrs


class NextRunsQuerySerializer(QueryParamsSerializer):
    count = serializers.IntegerField(required=False, min_value=1, max_value=PREVIEW_MAX, default=5)


class TaskListQuerySerializer(QueryParamsSerializer):
    status = serializers.ChoiceField(choices=Task.Status.choices, required=False)
    schedule_kind = serializers.ChoiceField(choices=Task.Kind.choices, required=False)
    search = serializers.CharField(required=False, max_length=200)


class SchedulePreviewSerializer(serializers.Serializer):
    schedule_kind = serializers.ChoiceField(choices=Task.Kind.choices)
    schedule_expr = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    timezone = serializers.CharField(max_length=64, required=False, default=settings.TIME_ZONE)
    count = serializers.IntegerField(min_value=1, max_value=PREVIEW_MAX, required=False, default=5)
    after = serializers.DateTimeField(required=False)


class OccurrenceSerializer(serializers.Serializer):
    at = serializers.CharField(help_text="Local time in the task's timezone, ISO 8601 with offset.")
    utc = serializers.CharField(help_text="The same instant in UTC (ISO 8601, Z).")
    skipped = serializers.CharField(required=False, help_text="Present when a snooze covers it: `snoozed`.")


class OccurrencesSerializer(serializers.Serializer):
    description = serializers.CharField()
    occurrences = OccurrenceSerializer(many=True)


class TaskViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = TaskSerializer
    scope_map = {
        "list": SCOPE_TASKS_READ,
        "create": SCOPE_TASKS_WRITE,
        "retrieve": SCOPE_TASKS_READ,
        "partial_update": SCOPE_TASKS_WRITE,
        "destroy": SCOPE_TASKS_WRITE,
        "run_now": SCOPE_TASKS_WRITE,
        "pause": SCOPE_TASKS_WRITE,
        "resume": SCOPE_TASKS_WRITE,
        "cancel": SCOPE_TASKS_WRITE,
        "snooze": SCOPE_TASKS_WRITE,
        "next_runs": SCOPE_TASKS_READ,
        "stats": SCOPE_TASKS_READ,
    }

    def get_queryset(self) -> Any:
        return selectors.task_visible_to(request_agent(self.request))

    def get_object(self) -> Task:
        return selectors.task_get(agent=request_agent(self.request), task_id=self.kwargs["pk"])

    def _actor(self) -> Actor:
        return Actor.of_agent(request_agent(self.request))

    @extend_schema(
        summary="Tasks, newest first", parameters=[TaskListQuerySerializer], responses=TaskSerializer(many=True)
    )
    def list(self, request: Request) -> Response:
        query = TaskListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        tasks = selectors.task_list(agent=request_agent(request), **query.validated_data)
        page = self.paginate_queryset(tasks)
        return self.get_paginated_response(TaskSerializer(page, many=True).data)

    @extend_schema(summary="Create a task", responses={201: TaskSerializer})
    @idempotent
    def create(self, request: Request) -> Response:
        serializer = TaskSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        task = services.task_create(owner=request_agent(request), actor=self._actor(), fields=serializer.validated_data)
        serializer.instance = task  # its fields are built already: the answer is the task's representation
        return Response(serializer.data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="One task")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(self.get_object()).data)

    @extend_schema(summary="Change a task (the merged task is validated; the schedule is re-synced)")
    def partial_update(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        serializer = TaskSerializer(task, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        task = services.task_update(task=task, actor=self._actor(), fields=serializer.validated_data)
        return Response(TaskSerializer(task).data)

    @extend_schema(summary="Delete a task: it stops firing; its runs stay readable", responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        services.task_delete(task=self.get_object(), actor=self._actor())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        summary="Run the task now (params merged over the task's)",
        request=RunNowSerializer,
        responses={202: RunSerializer},
    )
    @action(detail=True, methods=["post"], url_path="run_now")
    @idempotent
    def run_now(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        body = RunNowSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        run = services.task_run_now(
            task=task,
            actor=self._actor(),
            params=body.validated_data.get("params"),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Pause: the task stops firing (409 unless active)",
        request=None,
        responses={200: TaskSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(services.task_pause(task=self.get_object(), actor=self._actor())).data)

    @extend_schema(
        summary="Resume at the next occurrence, no backfill (409 unless paused)",
        request=None,
        responses={200: TaskSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(services.task_resume(task=self.get_object(), actor=self._actor())).data)

    @extend_schema(
        summary="Cancel for good (409 if already canceled or completed)",
        request=None,
        responses={200: TaskSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(services.task_cancel(task=self.get_object(), actor=self._actor())).data)

    @extend_schema(
        summary="Postpone the next run (delay_seconds or until); what it covers is skipped",
        request=SnoozeSerializer,
        responses={200: TaskSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def snooze(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        body = SnoozeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        task = services.task_snooze(task=task, actor=self._actor(), **body.validated_data)
        return Response(TaskSerializer(task).data)

    @extend_schema(
        summary="The next occurrences, as beat will dispatch them",
        parameters=[NextRunsQuerySerializer],
        responses=OccurrencesSerializer,
    )
    @action(detail=True, methods=["get"])
    def next_runs(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        query = NextRunsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(
            {
                "description": describe(task.schedule_kind, task.schedule_expr, task.timezone),
                "occurrences": selectors.task_next_runs(task=task, count=query.validated_data["count"]),
            }
        )

    @extend_schema(
        summary="The task's run statistics, as GET /runs/stats?task= computes them",
        responses=RunStatsSerializer,
    )
    @action(detail=True, methods=["get"])
    def stats(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        return Response(RunStatsSerializer(run_stats(agent=None, task_id=task.pk)).data)


class SchedulePreviewView(views.APIView):
    """POST /schedules/preview: the next occurrences of any schedule, as the scheduler computes them."""

    required_scope = SCOPE_TASKS_READ

    @extend_schema(
        summary="Preview a schedule: description and next occurrences",
        request=SchedulePreviewSerializer,
        responses=OccurrencesSerializer,
    )
    def post(self, request: Request) -> Response:
        body = SchedulePreviewSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        return Response(
            selectors.schedule_preview(
                kind=data["schedule_kind"],
                expr=data["schedule_expr"],
                tz=data["timezone"],
                count=data["count"],
                after=data.get("after"),
            )
        )
