"""Pipeline endpoints of the agents' API: POST /pipelines/validate (dry-run, no tool is called)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ordinaut_site.models import SCOPE_TASKS_READ

from .dryrun import pipeline_dry_run

# What agents read about a task's payload (REST schema and MCP argument descriptions).
PAYLOAD_HELP = (
    'What a run does: {"params": {...}, "pipeline": [step, ...]}. A step is {"id", "uses": '
    '"server.tool", "with": {...}, "if"?, "save_as"?, "retry"?, "timeout_seconds"?, "on_error"?: '
    '"fail"|"continue"}. Strings may hold ${...} JMESPath templates over {params, steps, event, '
    "task, run, now}, e.g. ${steps.fetch.items} or ${now+24h}. Check it first with validate_pipeline."
)


class ValidateRequestSerializer(serializers.Serializer):
    payload = serializers.JSONField(help_text=PAYLOAD_HELP)
    params = serializers.DictField(required=False, help_text="Merged over the payload's params.")
    step_outputs = serializers.DictField(
        required=False, help_text="Fake outputs of upstream steps, by step id (missing ones are null)."
    )
    event = serializers.JSONField(required=False, allow_null=True, help_text="The event an event task would see.")
    timezone = serializers.CharField(required=False, max_length=64, help_text="For `now` (default: the server's).")
    now = serializers.DateTimeField(required=False, help_text="The logical time (default: the current time).")

    def validate_timezone(self, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, KeyError, OSError):
            raise serializers.ValidationError(f"{value!r} is not an IANA timezone name") from None
        return value


class DryRunStepSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    id = serializers.CharField()
    uses = serializers.JSONField()
    tool_found = serializers.BooleanField()
    if_result = serializers.BooleanField(allow_null=True, help_text="What the step's `if` decides (null: no if).")
    would_run = serializers.BooleanField()
    rendered_input = serializers.JSONField()
    input_errors = serializers.ListField(child=serializers.CharField())
    unresolved_paths = serializers.ListField(child=serializers.CharField(), help_text="`${...}` that rendered null.")
    errors = serializers.ListField(child=serializers.CharField())  # type: ignore[assignment]


class DryRunProblemSerializer(serializers.Serializer):
    field = serializers.CharField()
    message = serializers.CharField()


class ValidateResponseSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    errors = DryRunProblemSerializer(many=True)  # type: ignore[assignment]
    warnings = DryRunProblemSerializer(many=True)
    steps = DryRunStepSerializer(many=True)


class PipelineValidateView(APIView):
    required_scope = SCOPE_TASKS_READ

    @extend_schema(
        summary="Dry-run a pipeline: structure, tools, rendered inputs, schema errors, `if` decisions",
        request=ValidateRequestSerializer,
        responses=ValidateResponseSerializer,
    )
    def post(self, request: Request) -> Response:
        body = ValidateRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data: dict[str, Any] = body.validated_data
        report = pipeline_dry_run(
            payload=data["payload"],
            params=data.get("params"),
            step_outputs=data.get("step_outputs"),
            event=data.get("event"),
            timezone_name=data.get("timezone"),
            now=data.get("now"),
        )
        return Response(report)
