"""Runs and step runs: the record of what happened, one row per occurrence and per step."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Run(models.Model):
    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        EVENT = "event"
        MANUAL = "manual"
        REPLAY = "replay"

    class Status(models.TextChoices):
        # Created ahead of its instant (ORDINAUT_DISPATCH_LEAD_S), its first step sent with an ETA;
        # whether it runs is decided when that step starts.
        SCHEDULED = "scheduled"
        QUEUED = "queued"
        RUNNING = "running"
        WAITING_APPROVAL = "waiting_approval"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELED = "canceled"
        SKIPPED = "skipped"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.SKIPPED)
    # Started or about to: a scheduled run is not yet active (its instant has not come).
    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.WAITING_APPROVAL)
    NOT_DONE = (Status.SCHEDULED, *ACTIVE)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: (task, trigger_key) and (task, -created_at) lead with it, and every
    # index is one more write on each of the run's updates (one per step).
    task = models.ForeignKey("tasks.Task", on_delete=models.PROTECT, related_name="runs", db_index=False)
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    # The occurrence this run is for; unique per task so no occurrence runs twice.
    trigger_key = models.CharField(max_length=300)
    scheduled_for = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    skip_reason = models.CharField(max_length=16, blank=True)

    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    context = models.JSONField(default=dict, blank=True, help_text="{params, event, now} seen by templates.")
    pipeline = models.JSONField(default=list, blank=True, help_text="The steps as they were when the run began.")
    error = models.JSONField(null=True, blank=True, help_text="{code, message, step_id}")
    result = models.JSONField(null=True, blank=True)
    # Indexed only where set (Meta): most runs are not replays.
    replay_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replays", db_index=False
    )
    jitter_seconds = models.FloatField(default=0)

    # Progress bookkeeping for the engine and the recovery sweeper.
    current_step = models.PositiveIntegerField(default=0, help_text="Index of the next step to run.")
    dispatch_count = models.PositiveIntegerField(default=0, help_text="Times a chain was sent for this run.")
    deadline_at = models.DateTimeField(null=True, blank=True, help_text="Sweeper re-dispatches after this.")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["task", "trigger_key"], name="run_unique_trigger_key"),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "scheduled",
                        "queued",
                        "running",
                        "waiting_approval",
                        "succeeded",
                        "failed",
                        "canceled",
                        "skipped",
                    ]
                ),
                name="run_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["task", "-created_at"]),
            models.Index(fields=["status", "deadline_at"]),
            models.Index(fields=["replay_of"], name="run_replay_of", condition=Q(replay_of__isnull=False)),
            models.Index(fields=["-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} {self.trigger_key} {self.status}"

    @property
    def lateness_seconds(self) -> float | None:
        if self.started_at is None or self.scheduled_for is None:
            return None
        return (self.started_at - self.scheduled_for).total_seconds()


class StepRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"

    DONE = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED)

    # No index of its own: the unique (run, index) leads with it.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    index = models.PositiveSmallIntegerField()
    step_id = models.CharField(max_length=100)
    uses = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    input = models.JSONField(null=True, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Id of the Celery message executing the step; a redelivery of that message may resume it,
    # any other message finding the step running leaves it alone.
    claim_id = models.CharField(max_length=64, blank=True)
    # One entry per attempt: {attempt, started_at, finished_at, duration_ms, outcome, error, retry_in_s}.
    attempt_history = models.JSONField(default=list, blank=True)
    # Set while a step has suspended itself (orchestrator.wait): when to call the tool again.
    resume_at = models.DateTimeField(null=True, blank=True)
    # Why a skipped step did not run: "condition" (its `if` was false), or "approval_rejected" /
    # "approval_expired" (an earlier approval was declined and the pipeline stopped there).
    skip_reason = models.CharField(max_length=24, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [
            models.UniqueConstraint(fields=["run", "index"], name="steprun_unique_index"),
            models.UniqueConstraint(fields=["run", "step_id"], name="steprun_unique_step_id"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "succeeded", "failed", "skipped"]),
                name="steprun_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.index} {self.step_id} {self.status}"


class StepItem(models.Model):
    """One item of a `foreach` step: the tool called once for it, recorded like a step (input,
    output, attempts, timing), claimed by the Celery message that runs it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"

    DONE = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED)

    step = models.ForeignKey(StepRun, on_delete=models.CASCADE, related_name="items")
    index = models.PositiveIntegerField(help_text="The item's position in the step's foreach list (0-based).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    input = models.JSONField(null=True, blank=True, help_text="The step's `with`, rendered for this item.")
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    # Why a skipped item did not run: "step_failed" (another item failed the step first) or "canceled".
    skip_reason = models.CharField(max_length=24, blank=True)
    claim_id = models.CharField(max_length=64, blank=True)
    attempt_history = models.JSONField(default=list, blank=True)
    # While running: when the item counts as lost (its timeout, retry delay and grace have passed).
    deadline_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["step", "index"]
        constraints = [
            models.UniqueConstraint(fields=["step", "index"], name="stepitem_unique_index"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "running", "succeeded", "failed", "skipped"]),
                name="stepitem_status_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["claim_id"], name="stepitem_running_claim", condition=Q(status="running")),
        ]

    def __str__(self) -> str:
        return f"{self.step_id}[{self.index}] {self.status}"


class Approval(models.Model):
    """A human decision a run waits for (orchestrator.request_approval); one per approval step."""

    class Status(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"
        EXPIRED = "expired"
        CANCELED = "canceled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="approvals")
    step_index = models.PositiveSmallIntegerField()
    step_id = models.CharField(max_length=100)
    message = models.TextField(max_length=2000)
    data = models.JSONField(null=True, blank=True, help_text="What is to be approved (a list: items to pick from).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.JSONField(null=True, blank=True, help_text="{kind, id, name} of who decided.")
    comment = models.TextField(max_length=2000, blank=True)
    approved_items = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["run", "step_index"], name="approval_unique_step"),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "approved", "rejected", "expired", "canceled"]),
                name="approval_status_valid",
            ),
        ]
        indexes = [models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.step_index} {self.status}"
