"""The Task: what an agent wants run, when, and with which policies."""

from __future__ import annotations

import uuid
from typing import Any, TypeAlias

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone as dj_timezone

from .beat_schedule import OccurrenceSchedule, rrule_schedule
from .schedules import ScheduleKind


def default_timezone() -> str:
    return settings.TIME_ZONE


class Task(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        PAUSED = "paused"
        CANCELED = "canceled"
        COMPLETED = "completed"

    Kind: TypeAlias = ScheduleKind  # defined in tasks/schedules.py, which must not import this module

    class Overlap(models.TextChoices):
        SKIP = "skip"
        ALLOW = "allow"
        QUEUE = "queue"
        CANCEL_PREVIOUS = "cancel_previous"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey("ordinaut.Agent", on_delete=models.PROTECT, related_name="tasks")
    title = models.CharField(max_length=200)
    description = models.TextField(max_length=2000, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE, db_index=True)

    schedule_kind = models.CharField(max_length=10, choices=Kind.choices)
    schedule_expr = models.TextField(
        max_length=2000, blank=True, help_text="Cron fields, RRULE text, ISO timestamp, interval or event topic."
    )
    timezone = models.CharField(max_length=64, default=default_timezone, help_text="IANA timezone of the schedule.")
    payload = models.JSONField(help_text='{"params": {...}, "pipeline": [step, ...]}')

    priority = models.PositiveSmallIntegerField(default=5, help_text="0 (lowest) to 9 (highest).")
    max_retries = models.PositiveSmallIntegerField(default=3, help_text="Default retries per step (0-20).")
    retry_backoff_seconds = models.FloatField(default=2.0, help_text="First retry delay; doubles each attempt.")
    retry_backoff_max_seconds = models.FloatField(default=300.0, help_text="Cap on the retry delay.")
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Default step timeout.")
    catchup_window_seconds = models.PositiveIntegerField(
        default=300, help_text="Missed occurrences younger than this still run after downtime."
    )
    overlap = models.CharField(max_length=16, choices=Overlap.choices, default=Overlap.SKIP)
    jitter_seconds = models.PositiveIntegerField(default=0, help_text="Random delay 0..N added at dispatch.")
    condition = models.TextField(blank=True, default="", help_text="JMESPath evaluated at fire time; empty: none.")

    next_run_at = models.DateTimeField(null=True, blank=True, db_index=True, help_text="Next time it will run.")
    last_run_at = models.DateTimeField(null=True, blank=True)
    snoozed_until = models.DateTimeField(null=True, blank=True)
    # Beat's durable cursor: every occurrence at or before this instant has been dispatched. Set
    # to "now" when a schedule starts or changes (nothing before it is owed), advanced by beat.
    fired_through = models.DateTimeField(null=True, blank=True, editable=False)
    # Bumped by every change to the schedule or its cursor; beat only advances the cursor of the
    # version it loaded, so a change made while beat dispatches is never overwritten.
    schedule_version = models.PositiveIntegerField(default=0, editable=False)
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="ordinaut_task",
        editable=False,
        help_text="The django-celery-beat row that drives this task (one per task, never shared).",
    )

    # Set by beat when the task's beat row cannot be evaluated: the task is parked (beat fires the
    # others, not this one) until its schedule changes or the row can be read again.
    schedule_error = models.TextField(blank=True, default="", editable=False)
    schedule_parked_at = models.DateTimeField(null=True, blank=True, editable=False)

    created_at = models.DateTimeField(default=dj_timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False, help_text="Set by DELETE.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["owner", "-created_at"]),
            # /health counts parked tasks on every call; there are few or none.
            models.Index(
                fields=["schedule_parked_at"], condition=Q(schedule_parked_at__isnull=False), name="task_parked"
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(priority__lte=9), name="task_priority_0_9"),
            models.CheckConstraint(condition=Q(max_retries__lte=20), name="task_max_retries_0_20"),
            models.CheckConstraint(
                condition=Q(status__in=["active", "paused", "canceled", "completed"]), name="task_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(schedule_kind__in=["cron", "rrule", "once", "interval", "event", "manual"]),
                name="task_schedule_kind_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.title

    @property
    def params(self) -> dict:
        params = (self.payload or {}).get("params") or {}
        return params if isinstance(params, dict) else {}

    @property
    def pipeline(self) -> list:
        return list((self.payload or {}).get("pipeline") or [])


class RRuleSchedule(models.Model):
    """An RFC 5545 recurrence rule as a beat schedule (django-celery-beat has no RRULE model).

    Like dcb's schedule models, `.schedule` gives the celery schedule object (the one beat uses for
    the task, see tasks/beat_schedule.py). The PeriodicTask
    of an RRULE task also points at a far-future one-off ClockedSchedule, so the row stays valid
    for django-celery-beat (and the stock scheduler, if ever run, never fires it).
    """

    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask", on_delete=models.CASCADE, related_name="rrule_schedule"
    )
    rrule = models.TextField(max_length=2000, help_text="DTSTART/RRULE/RDATE/EXDATE lines.")
    timezone = models.CharField(max_length=64)

    class Meta:
        verbose_name = "RRULE schedule"

    def __str__(self) -> str:
        return f"{self.rrule.splitlines()[-1]} ({self.timezone})"

    @property
    def schedule(self) -> OccurrenceSchedule:
        return rrule_schedule(rrule=self.rrule, tz_name=self.timezone)


class Event(models.Model):
    """Something that happened, published by an agent (POST /events) or a step
    (orchestrator.emit_event). The row is the truth; the Redis stream entry is the nudge that
    makes the events consumer fire the event tasks it matches."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    topic = models.CharField(max_length=200, db_index=True)
    payload = models.JSONField(default=dict, blank=True)
    source = models.CharField(max_length=200, blank=True, help_text="Free text: who or what says it happened.")
    publisher = models.ForeignKey("ordinaut.Agent", on_delete=models.PROTECT, related_name="events")
    idempotency_key = models.CharField(max_length=300, blank=True)
    # Events emitted by a step count the emissions since an event from outside (0): a chain of
    # tasks that keeps emitting stops at ORDINAUT_EVENT_MAX_HOPS.
    hops = models.PositiveSmallIntegerField(default=0)
    # Published with the `admin` scope (by the token used, or by a task owner holding it): the
    # event reaches every agent's matching event tasks, not only the publisher's own.
    broadcast = models.BooleanField(default=False)
    emitted_by_run = models.ForeignKey(
        "runs.Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="emitted_events"
    )
    published_at = models.DateTimeField(default=dj_timezone.now)
    # Set once the event is on the Redis stream; empty while Redis could not take it (the events
    # consumer adds such events when Redis is back). The API shows an empty one as null.
    stream_id = models.CharField(max_length=64, blank=True, default="")
    consumed_at = models.DateTimeField(null=True, blank=True, help_text="When the consumer fired its tasks.")

    class Meta:
        ordering = ["-published_at"]
        indexes = [
            models.Index(fields=["publisher", "-published_at"]),
            models.Index(fields=["-published_at"]),
            models.Index(fields=["published_at"], condition=Q(stream_id=""), name="event_unpublished"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["publisher", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="event_unique_idempotency_key",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.topic} {self.pk}"

    def as_context(self) -> dict[str, Any]:
        """The event as runs, templates and conditions see it (`${event.payload.x}`)."""
        return {
            "id": str(self.pk),
            "topic": self.topic,
            "payload": self.payload,
            "source": self.source,
            "publisher": {"id": str(self.publisher_id), "name": self.publisher.name},
            "published_at": self.published_at.isoformat(),
            "hops": self.hops,
        }
