"""Run and approval endpoints of the agents' API: serializers and views (logic lives in services)."""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.drainage import set_override
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import UUID_LOOKUP, QueryParamsSerializer, error_responses
from ordinaut_site.audit import Actor
from ordinaut_site.auth import request_agent
from ordinaut_site.errors import NotFound
from ordinaut_site.models import SCOPE_RUNS_READ, SCOPE_RUNS_WRITE

from . import selectors, services
from .models import Approval, Run, StepItem, StepRun

MAX_COMMENT_LEN = 2000


class StepItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = StepItem
        fields = [
            "index",
            "status",
            "skip_reason",
            "attempts",
            "input",
            "output",
            "error",
            "started_at",
            "finished_at",
            "duration_ms",
            "attempt_history",
        ]
        read_only_fields = fields


class StepRunSerializer(serializers.ModelSerializer):
    id = serializers.CharField(source="step_id")
    items = serializers.SerializerMethodField(
        help_text="A foreach step's items in order (each call's input, output, attempts and timing); null otherwise."
    )

    class Meta:
        model = StepRun
        fields = [
            "index",
            "id",
            "uses",
            "status",
            "skip_reason",
            "attempts",
            "input",
            "output",
            "error",
            "started_at",
            "finished_at",
            "duration_ms",
            "resume_at",
            "attempt_history",
            "items",
        ]
        read_only_fields = fields

    @extend_schema_field(StepItemSerializer(many=True, allow_null=True))  # type: ignore[misc]
    def get_items(self, step: StepRun) -> list[dict[str, Any]] | None:
        pipeline = self.context.get("pipeline") or []
        entry = pipeline[step.index] if step.index < len(pipeline) else {}
        if not isinstance(entry, dict) or "foreach" not in entry:
            return None
        items = step.items.all()  # prefetched by selectors.run_steps
        return StepItemSerializer(items, many=True).data  # type: ignore[return-value]


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


class ApprovalSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id")
    task = serializers.UUIDField(source="run.task_id")

    class Meta:
        model = Approval
        fields = [
            "id",
            "run",
            "task",
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
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    steps = serializers.SerializerMethodField()
    approvals = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps", "approvals"]
        read_only_fields = fields

    @extend_schema(responses=StepRunSerializer(many=True))  # type: ignore[misc]
    def get_steps(self, run: Run) -> list[dict[str, Any]]:
        steps = selectors.run_steps(run=run)
        return StepRunSerializer(steps, many=True, context={"pipeline": run.pipeline}).data  # type: ignore[return-value]

    @extend_schema(responses=ApprovalSerializer(many=True))  # type: ignore[misc]
    def get_approvals(self, run: Run) -> list[dict[str, Any]]:
        return ApprovalSerializer(run.approvals.order_by("step_index"), many=True).data  # type: ignore[return-value]


class CommaChoicesField(serializers.CharField):
    """`?status=failed,canceled`: one or more of the choices, comma-separated."""

    def __init__(self, *, choices: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.choices = choices
        # OpenAPI: the comma-separated list as a pattern, so clients (and schemathesis) know the values.
        one = "(" + "|".join(re.escape(choice) for choice in choices) + ")"
        pattern = rf"^[\s,]*({one}(\s*,[\s,]*{one})*)?[\s,]*$"
        set_override(self, "field", {"type": "string", "pattern": pattern})

    def to_internal_value(self, data: Any) -> list[str]:  # type: ignore[override]
        values = [part.strip() for part in str(super().to_internal_value(data)).split(",") if part.strip()]
        unknown = [value for value in values if value not in self.choices]
        if unknown:
            raise serializers.ValidationError(f"unknown value {unknown[0]!r}; one of: {', '.join(self.choices)}")
        return values


def _alias(attrs: dict[str, Any], name: str, alias: str) -> dict[str, Any]:
    """`alias` (the MCP tools' spelling, e.g. task_id) means `name` (task); both, differing, is a 400."""
    if alias in attrs:
        value = attrs.pop(alias)
        if attrs.get(name) not in (None, value):
            raise serializers.ValidationError({alias: [f"differs from {name}; give one of them"]})
        attrs[name] = value
    return attrs


class RunListQuerySerializer(QueryParamsSerializer):
    task = serializers.UUIDField(required=False)
    task_id = serializers.UUIDField(required=False, help_text="The same as task (the MCP tools' spelling).")
    status = CommaChoicesField(choices=list(Run.Status.values), required=False, allow_blank=True, max_length=200)
    trigger = CommaChoicesField(choices=list(Run.Trigger.values), required=False, allow_blank=True, max_length=200)
    since = serializers.DateTimeField(required=False, help_text="Runs created at or after this time.")
    until = serializers.DateTimeField(required=False, help_text="Runs created before this time.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be later than since"]})
        return _alias(attrs, "task", "task_id")


class ApprovalListQuerySerializer(QueryParamsSerializer):
    status = CommaChoicesField(choices=list(Approval.Status.values), required=False, allow_blank=True, max_length=200)
    run = serializers.UUIDField(required=False)
    run_id = serializers.UUIDField(required=False, help_text="The same as run (the MCP tools' spelling).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return _alias(attrs, "run", "run_id")


class ReplaySerializer(serializers.Serializer):
    # `from` is a Python keyword: the field is declared through the class namespace.
    locals()["from"] = serializers.ChoiceField(
        choices=list(services.REPLAY_FROM),
        required=False,
        default="failed_step",
        help_text="failed_step (earlier outputs reused) or start",
    )


class ApproveSerializer(serializers.Serializer):
    items = serializers.ListField(
        child=serializers.JSONField(),
        required=False,
        max_length=services.MAX_APPROVAL_ITEMS,
        help_text="The items approved, picked from the approval's data (default: all of them).",
    )
    comment = serializers.CharField(required=False, allow_blank=True, max_length=MAX_COMMENT_LEN, default="")


class RejectSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=MAX_COMMENT_LEN, default="")


class RunStatsQuerySerializer(QueryParamsSerializer):
    task = serializers.UUIDField(required=False, help_text="Only the runs of this task.")
    task_id = serializers.UUIDField(required=False, help_text="The same as task (the MCP tools' spelling).")
    since = serializers.DateTimeField(required=False, help_text="Runs created at or after this time.")
    until = serializers.DateTimeField(required=False, help_text="Runs created before this time.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be later than since"]})
        return _alias(attrs, "task", "task_id")


def _counts_serializer(name: str, values: list[str], what: str) -> type[serializers.Serializer]:
    fields = {value: serializers.IntegerField(help_text=f"Runs {what} {value}.") for value in values}
    return type(name, (serializers.Serializer,), fields)


RunStatusCountsSerializer = _counts_serializer("RunStatusCountsSerializer", list(Run.Status.values), "in status")
RunTriggerCountsSerializer = _counts_serializer("RunTriggerCountsSerializer", list(Run.Trigger.values), "triggered by")


class PercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True, help_text="Median, in seconds (null: no run to measure).")
    p95 = serializers.FloatField(allow_null=True, help_text="95th percentile, in seconds (null: no run to measure).")


class LastFailureSerializer(serializers.Serializer):
    run = serializers.UUIDField()
    finished_at = serializers.DateTimeField(allow_null=True)
    code = serializers.CharField(allow_null=True, help_text="The code of the run's error.")


class RunStatsSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Runs counted.")
    by_status = RunStatusCountsSerializer()
    by_trigger = RunTriggerCountsSerializer()
    success_rate = serializers.FloatField(
        allow_null=True, help_text="succeeded / (succeeded + failed + canceled); null when none has finished."
    )
    duration_seconds = PercentilesSerializer(help_text="finished_at - started_at of the runs that ran.")
    lateness_seconds = PercentilesSerializer(
        help_text="started_at - scheduled_for (how late the first step started) of the runs that have both."
    )
    last_failure = LastFailureSerializer(allow_null=True, help_text="The failed run that finished last, or null.")


def _body(serializer_class: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    # An empty body reads as {}; any other JSON that is not an object (false, [], null) is a 400.
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


class RunViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = RunDetailSerializer
    scope_map = {
        "list": SCOPE_RUNS_READ,
        "retrieve": SCOPE_RUNS_READ,
        "cancel": SCOPE_RUNS_WRITE,
        "replay": SCOPE_RUNS_WRITE,
        "approve": SCOPE_RUNS_WRITE,
        "reject": SCOPE_RUNS_WRITE,
        "stats": SCOPE_RUNS_READ,
    }

    def get_queryset(self) -> Any:
        return selectors.run_visible_to(request_agent(self.request))

    def _run(self, request: Request, pk: str) -> Run:
        return selectors.run_get(agent=request_agent(request), run_id=pk)

    @extend_schema(
        summary="Runs, newest first (without steps)",
        parameters=[RunListQuerySerializer],
        responses=RunSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        query = RunListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        runs = selectors.run_list(
            agent=request_agent(request),
            task_id=filters.get("task"),
            status=filters.get("status"),
            trigger=filters.get("trigger"),
            since=filters.get("since"),
            until=filters.get("until"),
        )
        page = self.paginate_queryset(runs)
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(
        summary="Run statistics: counts by status and trigger, success rate, duration and lateness percentiles",
        parameters=[RunStatsQuerySerializer],
        responses=RunStatsSerializer,
    )
    @action(detail=False, methods=["get"])
    def stats(self, request: Request) -> Response:
        query = RunStatsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = query.validated_data
        stats = selectors.run_stats(
            agent=request_agent(request),
            task_id=filters.get("task"),
            since=filters.get("since"),
            until=filters.get("until"),
        )
        return Response(RunStatsSerializer(stats).data)

    @extend_schema(summary="A run with its steps and approvals", responses=RunDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(RunDetailSerializer(self._run(request, pk)).data)

    @extend_schema(
        summary="Cancel a queued, running or waiting run (409 if it already ended)",
        request=None,
        responses={200: RunDetailSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        run = services.run_cancel(run=self._run(request, pk), actor=Actor.of_agent(request_agent(request)))
        return Response(RunDetailSerializer(run).data)

    @extend_schema(
        summary="Run a failed or canceled run again, from its failed step or from the start",
        request=ReplaySerializer,
        responses={202: RunSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: str) -> Response:
        body = _body(ReplaySerializer, request)
        new_run = services.run_replay(
            run=self._run(request, pk), from_=body["from"], actor=Actor.of_agent(request_agent(request))
        )
        return Response(RunSerializer(new_run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Approve what a waiting run asks, optionally a subset of items (409 unless waiting_approval)",
        request=ApproveSerializer,
        responses={200: RunDetailSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        body = _body(ApproveSerializer, request)
        run = services.approval_decide(
            run=self._run(request, pk),
            approve=True,
            items=body.get("items"),
            comment=body["comment"],
            actor=Actor.of_agent(request_agent(request)),
        )
        return Response(RunDetailSerializer(run).data)

    @extend_schema(
        summary="Reject what a waiting run asks (409 unless waiting_approval)",
        request=RejectSerializer,
        responses={200: RunDetailSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str) -> Response:
        body = _body(RejectSerializer, request)
        run = services.approval_decide(
            run=self._run(request, pk),
            approve=False,
            comment=body["comment"],
            actor=Actor.of_agent(request_agent(request)),
        )
        return Response(RunDetailSerializer(run).data)


class ApprovalViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = ApprovalSerializer
    scope_map = {"list": SCOPE_RUNS_READ, "retrieve": SCOPE_RUNS_READ}

    def get_queryset(self) -> Any:
        return selectors.approval_visible_to(request_agent(self.request))

    @extend_schema(
        summary="Approvals, newest first",
        parameters=[ApprovalListQuerySerializer],
        responses=ApprovalSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        query = ApprovalListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        approvals = selectors.approval_list(
            agent=request_agent(request),
            status=query.validated_data.get("status"),
            run_id=query.validated_data.get("run"),
        )
        page = self.paginate_queryset(approvals)
        return self.get_paginated_response(ApprovalSerializer(page, many=True).data)

    @extend_schema(summary="One approval", responses=ApprovalSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        approval = selectors.approval_list(agent=request_agent(request)).filter(pk=pk).first()
        if approval is None:
            raise NotFound("Approval not found.")
        return Response(ApprovalSerializer(approval).data)
