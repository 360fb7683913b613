"""Event endpoints of the agents' API: publish (POST /events), list and read (logic in tasks/events.py)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import UUID_LOOKUP, QueryParamsSerializer
from ordinaut_site.audit import Actor
from ordinaut_site.auth import request_agent
from ordinaut_site.idempotency import idempotent
from ordinaut_site.models import SCOPE_EVENTS_PUBLISH

from . import events
from .api import AgentRefSerializer
from .models import Event

TOPIC_MESSAGE = "must be 1 to 200 characters among letters, digits and . _ : -"


class EventPublishSerializer(serializers.Serializer):
    topic = serializers.RegexField(
        events.TOPIC_REGEX,
        max_length=200,
        error_messages={"invalid": TOPIC_MESSAGE},
        help_text="What happened, dotted by convention (`email.received`); event tasks match it exactly or by glob.",
    )
    payload = serializers.DictField(help_text="Any JSON object; steps see it as `${event.payload...}`.")
    # The metaclass collects declared fields, so a field may be named "source" (as the model's is).
    source = serializers.CharField(  # type: ignore[assignment]
        required=False, allow_blank=True, max_length=events.SOURCE_MAX_CHARS, default="", help_text="Free text."
    )


class EventAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    topic = serializers.CharField()
    stream_id = serializers.CharField(
        allow_null=True,
        help_text="The entry id on the Redis stream; null when the event is not on the stream yet (Redis was "
        "unreachable, or the request carried an Idempotency-Key: then it is added as the request commits). "
        "GET /events/{id} shows it.",
    )
    published_at = serializers.DateTimeField()


class EventSerializer(serializers.ModelSerializer):
    publisher = AgentRefSerializer(read_only=True)
    emitted_by_run = serializers.UUIDField(
        source="emitted_by_run_id",
        allow_null=True,
        help_text="The run whose step emitted it (orchestrator.emit_event).",
    )
    stream_id = serializers.CharField(allow_null=True, help_text="The entry id on the Redis stream (null: not yet).")

    class Meta:
        model = Event
        fields = [
            "id",
            "topic",
            "payload",
            "source",
            "publisher",
            "hops",
            "broadcast",
            "emitted_by_run",
            "stream_id",
            "published_at",
            "consumed_at",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Event) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["stream_id"] = data["stream_id"] or None
        return data


class EventListQuerySerializer(QueryParamsSerializer):
    topic = serializers.RegexField(
        events.TOPIC_FILTER_REGEX,
        required=False,
        allow_blank=True,
        max_length=200,
        error_messages={"invalid": "must be a topic, or a glob of one with * and ?"},
        help_text="Exact topic, or a glob with * and ? (`email.*`).",
    )
    since = serializers.DateTimeField(required=False, help_text="Events published at or after this time.")
    until = serializers.DateTimeField(required=False, help_text="Events published before this time.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("since") and attrs.get("until") and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["must be later than since"]})
        return attrs


class TopicSerializer(serializers.Serializer):
    topic = serializers.CharField()
    count = serializers.IntegerField(help_text="Events published on it.")
    last_published_at = serializers.DateTimeField(help_text="When the last of them was published.")


def accepted_body(event: Event) -> dict[str, Any]:
    fields = {"id": event.pk, "topic": event.topic, "stream_id": event.stream_id or None}
    return dict(EventAcceptedSerializer({**fields, "published_at": event.published_at}).data)


class EventViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = EventSerializer
    # Listing needs events:publish too (an agent reads back what it published); admin holds every scope.
    scope_map = {
        "create": SCOPE_EVENTS_PUBLISH,
        "list": SCOPE_EVENTS_PUBLISH,
        "retrieve": SCOPE_EVENTS_PUBLISH,
        "topics": SCOPE_EVENTS_PUBLISH,
    }

    def get_queryset(self) -> Any:
        return events.event_visible_to(request_agent(self.request))

    @extend_schema(
        summary="Publish an event: stored, then added to the event stream; matching event tasks run",
        request=EventPublishSerializer,
        responses={202: EventAcceptedSerializer},
    )
    @idempotent
    def create(self, request: Request) -> Response:
        body = EventPublishSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = request_agent(request)
        # An Idempotency-Key is honoured by @idempotent (kept ORDINAUT_IDEMPOTENCY_TTL_S, like on
        # every endpoint); the event's own idempotency key is for steps (orchestrator.emit_event).
        event = events.event_publish(publisher=agent, actor=Actor.of_agent(agent), **body.validated_data)
        return Response(accepted_body(event), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Events, newest first (an agent's own; every agent's for admins)",
        parameters=[EventListQuerySerializer],
        responses=EventSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        query = EventListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        found = events.event_list(
            agent=request_agent(request),
            topic=query.validated_data.get("topic") or None,
            since=query.validated_data.get("since"),
            until=query.validated_data.get("until"),
        )
        page = self.paginate_queryset(found)
        return self.get_paginated_response(EventSerializer(page, many=True).data)

    @extend_schema(summary="One event, with its stream id and when it was consumed", responses=EventSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(EventSerializer(events.event_get(agent=request_agent(request), event_id=pk)).data)

    @extend_schema(
        summary="Topics published (an agent's own; every agent's for admins), most recent first, with counts",
        responses=TopicSerializer(many=True),
    )
    @action(detail=False, methods=["get"])
    def topics(self, request: Request) -> Response:
        page = self.paginate_queryset(events.event_topics(agent=request_agent(request)))
        return self.get_paginated_response(TopicSerializer(page, many=True).data)
