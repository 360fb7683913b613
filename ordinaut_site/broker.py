"""Guards that keep a worker alive through a broker outage, installed where the Celery app is made
(ordinaut_site/celery.py). Both found by R2 (tests/reliability/test_r2_restarts.py) on celery 5.7.0,
kombu 5.7.0 and the billiard pinned with them; both stopped the worker ("Unrecoverable error").

1. kombu's Redis transport. When Redis goes away while a worker holds unacknowledged messages (a
job running, acknowledged late; a retry waiting out its countdown) and polls for more, Celery's
consumer first collects the lost connection, which detaches its transport (its `client` becomes
None), then closes it. Closing the channel restores the unacknowledged messages, and the Redis
client it builds for that reads the host from the detached `client`: AttributeError ('NoneType'
object has no attribute 'hostname'), which is no connection error, so the worker stopped instead
of reconnecting. Raised as the connection error it is, the close ignores it and the worker
reconnects. The messages stay in Redis' set of unacknowledged messages (Redis is away: they could
not have been restored anyway), which the transport re-delivers after its visibility timeout; the
runs they belong to are re-sent by the sweeper long before (at their deadline).

2. Late soft time limits in prefork pool processes. While the consumer reconnects, the worker's
main process runs no event loop: it reads no results from its pool processes and its time-limit
timers wait. When the loop resumes, the overdue timers fire before the results are read, so a job
that ended during the outage still looks running and its pool process gets SIGUSR1 (the soft
limit). billiard's handler raises SoftTimeLimitExceeded wherever that process is, e.g. writing a
message to the main process, whose next read then fails (UnpicklingError): after any outage
longer than a running step's timeout. Pool processes now raise it only while a job runs (from
task_prerun to task_postrun); one that arrives between jobs is ignored.
"""

from __future__ import annotations

import signal
from typing import Any

import redis
from billiard import pool as billiard_pool
from celery.signals import task_postrun, task_prerun
from kombu.transport import redis as kombu_redis


def redis_transport_guard() -> None:
    """Idempotent: the guard wraps Channel._connparams once per process."""
    channel: Any = kombu_redis.Channel
    if getattr(channel, "_ordinaut_detached_guard", False):
        return
    connparams = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed (transport detached)")
        return connparams(self, asynchronous=asynchronous)

    channel._connparams = _connparams
    channel._ordinaut_detached_guard = True


def _late_soft_timeout(signum: int, frame: Any) -> None:
    """A soft time limit between jobs: meant for a job that already ended. Nothing is done here
    (not even logging, whose locks a signal handler must not take)."""


def _soft_timeout_handler_set(handler: Any) -> None:
    """In a prefork pool process only: it runs the jobs in its main thread with billiard's handler
    (or this module's) on SIGUSR1. The worker's own main process (solo pool included) keeps its
    SIGUSR1 handler, and so do thread pools."""
    sig = billiard_pool.SIG_SOFT_TIMEOUT
    if sig is None:
        return
    if signal.getsignal(sig) in (billiard_pool.soft_timeout_sighandler, _late_soft_timeout):
        signal.signal(sig, handler)


@task_prerun.connect(weak=False)
def _soft_timeout_armed(**_: Any) -> None:
    _soft_timeout_handler_set(billiard_pool.soft_timeout_sighandler)


@task_postrun.connect(weak=False)
def _soft_timeout_disarmed(**_: Any) -> None:
    _soft_timeout_handler_set(_late_soft_timeout)
