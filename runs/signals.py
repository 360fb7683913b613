"""Signals runs/ sends so the apps above it (tasks/) can apply their policies without runs importing them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after the commit of each transition of a run to succeeded, failed or canceled (kwargs: run).
# tasks/ releases the next held run of an overlap=queue task here. Receivers must not raise.
run_finished = Signal()
# Sent by the recovery sweeper with the ids of tasks that have runs held back (overlap=queue) and
# maybe no one left to release them (a worker died between a run's end and the release; kwargs:
# task_ids). Receivers return how many runs they started.
held_runs_found = Signal()
# Sent by the first step job of a run created ahead of its instant (status scheduled), when it starts
# (kwargs: run). A receiver (tasks/) decides, under its task's lock, whether the run starts, waits for
# its turn or is skipped, and makes that transition (runs.services.run_scheduled_*); it returns True
# when it decided. With no receiver deciding, the run starts.
scheduled_run_due = Signal()
