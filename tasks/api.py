"""Task endpoints of the agents' API: serializers and views (logic lives in services)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import UUID_LOOKUP
from ordinaut_site.auth import request_agent
from ordinaut_site.models import SCOPE_TASKS_READ, SCOPE_TASKS_WRITE
from ordinaut_site.services import Actor
from runs.api import RunSerializer

from . import selectors, services
from .models import Task


class AgentRefSerializer(serializers.Serializer):
    id = serializers.UUIDField(read_only=True)
    name = serializers.CharField(read_only=True)


class TaskSerializer(serializers.ModelSerializer):
    title = serializers.CharField(min_length=1, max_length=200)
    description = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    schedule_expr = serializers.CharField(max_length=2000, required=False, allow_blank=True, trim_whitespace=True)
    timezone = serializers.CharField(max_length=64, required=False)
    payload = serializers.JSONField()
    priority = serializers.IntegerField(min_value=0, max_value=9, required=False)
    max_retries = serializers.IntegerField(min_value=0, max_value=20, required=False)
    retry_backoff_seconds = serializers.FloatField(min_value=0, max_value=3600, required=False)
    retry_backoff_max_seconds = serializers.FloatField(min_value=0, max_value=3600, required=False)
    timeout_seconds = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    catchup_window_seconds = serializers.IntegerField(min_value=0, max_value=30 * 86400, required=False)
    jitter_seconds = serializers.IntegerField(min_value=0, max_value=3600, required=False)
    condition = serializers.CharField(max_length=2000, required=False, allow_null=True, allow_blank=True)
    created_by = AgentRefSerializer(source="owner", read_only=True)
    schedule_description = serializers.SerializerMethodField()

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
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "status", "next_run_at", "last_run_at", "snoozed_until", "created_at", "updated_at"]

    def get_schedule_description(self, task: Task) -> str:
        if task.schedule_kind == Task.Kind.MANUAL:
            return "Runs only when started by hand (run_now)."
        return f"{task.schedule_kind}: {task.schedule_expr} ({task.timezone})"

    def validate_timeout_seconds(self, value: int | None) -> int | None:
        if value is not None and value > settings.ORDINAUT_MAX_STEP_TIMEOUT_S:
            raise serializers.ValidationError(f"must be at most {settings.ORDINAUT_MAX_STEP_TIMEOUT_S}")
        return value

    def validate_condition(self, value: str | None) -> str:
        return (value or "").strip()

    def to_representation(self, instance: Task) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["condition"] = data["condition"] or None
        return data


class RunNowSerializer(serializers.Serializer):
    params = serializers.DictField(required=False, default=dict)


class TaskViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = TaskSerializer
    scope_map = {
        "create": SCOPE_TASKS_WRITE,
        "retrieve": SCOPE_TASKS_READ,
        "run_now": SCOPE_TASKS_WRITE,
    }

    def get_queryset(self) -> Any:
        return selectors.task_visible_to(request_agent(self.request))

    def get_object(self) -> Task:
        return selectors.task_get(agent=request_agent(self.request), task_id=self.kwargs["pk"])

    def create(self, request: Request) -> Response:
        serializer = TaskSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        task = services.task_create(
            owner=request_agent(request), actor=Actor.of_agent(request_agent(request)), fields=serializer.validated_data
        )
        return Response(TaskSerializer(task).data, status=status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(TaskSerializer(self.get_object()).data)

    @action(detail=True, methods=["post"], url_path="run_now")
    def run_now(self, request: Request, pk: str) -> Response:
        task = self.get_object()
        body = RunNowSerializer(data=request.data if request.data else {})
        body.is_valid(raise_exception=True)
        run = services.task_run_now(
            task=task,
            actor=Actor.of_agent(request_agent(request)),
            params=body.validated_data.get("params"),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
        return Response(RunSerializer(run).data, status=status.HTTP_202_ACCEPTED)
