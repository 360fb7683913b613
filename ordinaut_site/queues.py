"""Celery queues: the scheduler's jobs have a queue of their own that workers read first.

A burst of occurrences creates many runs whose steps land on the default queue; occurrences that
fall due a second later must not wait behind those steps. Workers consume the queues in the order
given (Redis transport `queue_order_strategy=priority`), so firing is never stuck in line.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

# The recovery sweeper too: a worker lost under load must not wait for its steps' re-run behind
# the queue of steps that load made.
SCHEDULER_JOBS = ("tasks.fire", "tasks.fire_batch", "tasks.record_missed", "runs.sweep")


def schedule_queue(default: str) -> str:
    return f"{default}.schedule"


def _queue(name: str) -> Queue:
    # Each queue its own direct exchange and routing key: Celery would otherwise bind both to the
    # default exchange and key, and every message would land in both.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def queue_config(default: str) -> dict[str, Any]:
    """Celery settings (lower-case names) for a deployment whose default queue is `default`."""
    return {
        "task_default_queue": default,
        "task_default_exchange": default,
        "task_default_routing_key": default,
        "task_queues": (_queue(schedule_queue(default)), _queue(default)),
        "task_routes": {name: {"queue": schedule_queue(default)} for name in SCHEDULER_JOBS},
    }


def worker_queues(default: str) -> str:
    """The -Q value for a worker that serves everything, scheduler first."""
    return f"{schedule_queue(default)},{default}"
