"""Signals the cross-cutting package sends for the apps to act on (so it never imports them).

Receivers answer with the ids of the tasks they changed; the sender records them in its audit row.
"""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that deactivates an agent: kwargs agent, actor. Receivers pause the
# agent's active tasks and return their ids.
agent_deactivated = Signal()
# Sent inside the transaction that reactivates an agent: kwargs agent, actor, task_ids (those its
# deactivation paused). Receivers resume the ones still paused and return their ids.
agent_reactivated = Signal()
