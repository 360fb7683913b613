"""The worker's guards for broker outages (ordinaut_site/broker.py): a channel closed after its
connection was collected (the transport detached, as Celery's consumer does when Redis goes away)
while it holds an unacknowledged message raises no AttributeError, and the message stays in Redis'
set of unacknowledged messages; a pool process ignores a soft time limit that arrives between jobs.
R2 (tests/reliability/test_r2_restarts.py) covers both on a real worker."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from billiard import pool as billiard_pool
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import task_postrun, task_prerun
from django.conf import settings
from kombu import Connection, Exchange, Queue

from ordinaut_site import broker


@pytest.fixture
def queue(redis_client: redis.Redis) -> Iterator[Queue]:
    name = f"test-broker-{uuid.uuid4().hex[:8]}"
    yield Queue(name, Exchange(name, type="direct"), routing_key=name)
    redis_client.delete(name)


def _held_message(connection: Connection, queue: Queue) -> str:
    channel = connection.default_channel
    bound = queue(channel)
    bound.declare()
    connection.Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key=queue.routing_key)
    message = bound.get(no_ack=False)
    assert message is not None
    return str(message.delivery_tag)


def test_a_channel_closed_after_its_transport_was_detached_raises_a_connection_error(
    queue: Queue, redis_client: redis.Redis
) -> None:
    broker.redis_transport_guard()
    connection = Connection(settings.REDIS_URL)
    tag = _held_message(connection, queue)
    connection._do_close_transport()  # what Connection.collect() leaves behind
    connection.close()  # restores the unacknowledged message: a connection error, ignored
    try:
        assert redis_client.hexists("unacked", tag), "the message waits for the visibility timeout"
    finally:
        redis_client.hdel("unacked", tag)
        redis_client.zrem("unacked_index", tag)


def test_the_guard_is_installed_once_and_leaves_a_live_channel_alone(queue: Queue, redis_client: redis.Redis) -> None:
    broker.redis_transport_guard()
    broker.redis_transport_guard()
    connection = Connection(settings.REDIS_URL)
    tag = _held_message(connection, queue)
    connection.close()  # a live connection restores its unacknowledged message to the queue
    assert not redis_client.hexists("unacked", tag)
    with Connection(settings.REDIS_URL) as again:
        message = queue(again.default_channel).get(no_ack=True)
        assert message is not None
        assert message.payload == {"n": 1}


@pytest.fixture
def soft_timeout_signal() -> Iterator[int]:
    """SIGUSR1 with billiard's soft-timeout handler, as in a prefork pool process; restored after."""
    sig = billiard_pool.SIG_SOFT_TIMEOUT
    assert sig is not None
    previous = signal.signal(sig, billiard_pool.soft_timeout_sighandler)
    yield sig
    signal.signal(sig, previous)


def test_a_pool_process_ignores_a_soft_time_limit_between_jobs(soft_timeout_signal: int) -> None:
    task_postrun.send(sender=None, task_id="ended", task=None)
    os.kill(os.getpid(), soft_timeout_signal)  # late: its job ended while the main process reconnected
    task_prerun.send(sender=None, task_id="next", task=None)
    with pytest.raises(SoftTimeLimitExceeded):
        os.kill(os.getpid(), soft_timeout_signal)  # the running job's own limit
    task_postrun.send(sender=None, task_id="next", task=None)
    os.kill(os.getpid(), soft_timeout_signal)


def test_a_process_without_billiard_s_handler_keeps_its_own(soft_timeout_signal: int) -> None:
    def own(signum: int, frame: Any) -> None:
        pass

    signal.signal(soft_timeout_signal, own)
    task_prerun.send(sender=None, task_id="a", task=None)
    task_postrun.send(sender=None, task_id="a", task=None)
    assert signal.getsignal(soft_timeout_signal) is own
