"""Run endpoints of the agents' API: serializers and views."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import UUID_LOOKUP
from ordinaut_site.auth import request_agent
from ordinaut_site.models import SCOPE_RUNS_READ

from . import selectors
from .models import Run, StepRun


class StepRunSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="step_id")

    class Meta:
        model = StepRun
        fields = [
            "index",
            "id",
            "uses",
            "status",
            "attempts",
            "input",
            "output",
            "error",
            "started_at",
            "finished_at",
            "duration_ms",
        ]


class RunSerializer(serializers.ModelSerializer):
    task = serializers.UUIDField(source="task_id")
    task_title = serializers.CharField(source="task.title")
    replay_of = serializers.UUIDField(source="replay_of_id", allow_null=True)
    lateness_seconds = serializers.FloatField(allow_null=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "task",
            "task_title",
            "trigger",
            "trigger_key",
            "scheduled_for",
            "status",
            "skip_reason",
            "created_at",
            "started_at",
            "finished_at",
            "lateness_seconds",
            "replay_of",
            "error",
            "result",
            "context",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    steps = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps"]
        read_only_fields = fields

    def get_steps(self, run: Run) -> list[dict[str, Any]]:
        return StepRunSerializer(selectors.run_steps(run=run), many=True).data  # type: ignore[return-value]


class RunViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = RunDetailSerializer
    scope_map = {"retrieve": SCOPE_RUNS_READ}

    def get_queryset(self) -> Any:
        return selectors.run_visible_to(request_agent(self.request))

    def retrieve(self, request: Request, pk: str) -> Response:
        run = selectors.run_get(agent=request_agent(request), run_id=pk)
        return Response(RunDetailSerializer(run).data)
