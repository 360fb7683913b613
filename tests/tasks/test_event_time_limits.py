"""The events consumer's time limits (ORDINAUT_FIRE_SOFT_TIME_LIMIT_S / ORDINAUT_FIRE_TIME_LIMIT_S):
a delivery stuck on a locked task is rolled back and left pending while the entries after it are
delivered; it is delivered once the lock is gone, or given up after DELIVERY_TIME_LIMIT_TRIES; a
delivery that swallows the soft limit ends the process at the hard one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from runs.models import Run
from tasks.event_consumer import DELIVERY_TIME_LIMIT_TRIES, EXIT_HARD_TIME_LIMIT
from tasks.models import Event
from tests.support.events import clean_stream, make_consumer, pending_count, publish
from tests.support.processes import BASE_DIR, child_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def event_stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


@pytest.fixture
def limits(settings: Any) -> None:
    settings.ORDINAUT_FIRE_SOFT_TIME_LIMIT_S = 1
    settings.ORDINAUT_FIRE_TIME_LIMIT_S = 60


# publish(..., stream=False): the commit of these tests adds the entry (event_publish's after-commit XADD).


def runs_of(event: Event) -> list[Run]:
    return list(Run.objects.filter(trigger_key=f"event:{event.pk}"))


def test_a_stuck_delivery_is_left_pending_and_the_next_entries_are_delivered(
    agent: Any, make_task: Any, task_row_lock: Any, limits: None, redis_client: redis.Redis
) -> None:
    stuck_task = make_task("event", "stuck.*")
    make_task("event", "free.*")
    stuck = publish(agent.agent, "stuck.one", stream=False)
    free = publish(agent.agent, "free.one", stream=False)
    release = task_row_lock(stuck_task)
    consumer = make_consumer(claim_idle_ms=0)

    stats = consumer.run(iterations=3)

    assert stats.timed_out == 1
    assert runs_of(stuck) == [], "rolled back"
    assert len(runs_of(free)) == 1, "the entry after it was delivered"
    assert pending_count(redis_client) == 1, "the stuck entry is left pending"
    assert Event.objects.get(pk=stuck.pk).consumed_at is None

    release.set()
    consumer.claim()

    assert len(runs_of(stuck)) == 1
    assert pending_count(redis_client) == 0


def test_a_delivery_that_always_runs_past_the_limit_is_given_up(
    agent: Any, make_task: Any, task_row_lock: Any, limits: None, redis_client: redis.Redis
) -> None:
    task = make_task("event", "stuck.*")
    event = publish(agent.agent, "stuck.one", stream=False)
    task_row_lock(task)
    consumer = make_consumer(claim_idle_ms=0)

    consumer.run(iterations=2)  # its own pending entries first (none), then new ones
    for _ in range(DELIVERY_TIME_LIMIT_TRIES - 1):
        consumer.claim()

    assert consumer.stats.timed_out == DELIVERY_TIME_LIMIT_TRIES
    assert consumer.stats.bad == 1
    assert pending_count(redis_client) == 0, "acknowledged"
    assert runs_of(event) == []


def test_a_delivery_that_swallows_the_soft_limit_ends_the_process_at_the_hard_one() -> None:
    code = textwrap.dedent(
        """
        import time
        from tasks.event_consumer import time_limits
        with time_limits(soft_s=0.2, hard_s=1, what="a stubborn delivery"):
            while True:
                try:
                    time.sleep(0.05)
                except Exception:
                    pass
        """
    )
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=BASE_DIR,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_HARD_TIME_LIMIT, done.stderr
    assert "ran past the hard time limit" in done.stderr + done.stdout
