"""GET /audit: the audit log for admins, filtered and newest first."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.db.models import Q, QuerySet
from django_filters import fields as filter_fields
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets

from . import selectors
from .models import SCOPE_ADMIN, AuditLog


class ActorSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(source="actor_kind", choices=AuditLog.ACTOR_KINDS)
    id = serializers.CharField(source="actor_id")
    name = serializers.CharField(source="actor_name")


class AuditLogSerializer(serializers.ModelSerializer):
    actor = ActorSerializer(source="*")

    class Meta:
        model = AuditLog
        fields = ["at", "actor", "action", "subject_type", "subject_id", "details", "request_id"]
        read_only_fields = fields


class UtcIsoDateTimeField(filter_fields.IsoDateTimeField):
    """ISO 8601 in, UTC out: PostgreSQL refuses offsets past +-15:59 that Python parses happily."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Datetime value out of range.", code="invalid") from None


class UtcIsoDateTimeFilter(filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


class AuditFilter(filters.FilterSet):
    action = filters.CharFilter(
        method="filter_action", help_text='Exact action ("task.create"), or a prefix ending in "*" ("token.*").'
    )
    subject = filters.CharFilter(
        method="filter_subject", help_text='"type:id" ("agent:6f1c..."), "type:" for a type, or a bare subject id.'
    )
    subject_type = filters.CharFilter(field_name="subject_type")
    subject_id = filters.CharFilter(field_name="subject_id")
    actor = filters.CharFilter(method="filter_actor", help_text="The actor's id or name.")
    actor_kind = filters.ChoiceFilter(field_name="actor_kind", choices=AuditLog.ACTOR_KINDS)
    request_id = filters.CharFilter(field_name="request_id")
    since = UtcIsoDateTimeFilter(field_name="at", lookup_expr="gte", help_text="At or after (ISO 8601).")
    until = UtcIsoDateTimeFilter(field_name="at", lookup_expr="lt", help_text="Before (ISO 8601).")

    class Meta:
        model = AuditLog
        fields: list[str] = []

    def filter_action(self, queryset: QuerySet[AuditLog], name: str, value: str) -> QuerySet[AuditLog]:
        if value.endswith("*"):
            return queryset.filter(action__startswith=value[:-1])
        return queryset.filter(action=value)

    def filter_subject(self, queryset: QuerySet[AuditLog], name: str, value: str) -> QuerySet[AuditLog]:
        if ":" not in value:
            return queryset.filter(subject_id=value)
        subject_type, subject_id = value.split(":", 1)
        queryset = queryset.filter(subject_type=subject_type)
        return queryset.filter(subject_id=subject_id) if subject_id else queryset

    def filter_actor(self, queryset: QuerySet[AuditLog], name: str, value: str) -> QuerySet[AuditLog]:
        return queryset.filter(Q(actor_id=value) | Q(actor_name=value))


@extend_schema(summary="The audit log (newest first)")
class AuditLogViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    serializer_class = AuditLogSerializer
    filter_backends = [filters.DjangoFilterBackend]
    filterset_class = AuditFilter
    scope_map = {"list": SCOPE_ADMIN}

    def get_queryset(self) -> Any:
        return selectors.audit_list()
