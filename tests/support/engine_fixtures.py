"""Fixtures for engine tests that need workers of their own (import them into the test module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ordinaut_site.celery import app
from tests.support.processes import Worker


@pytest.fixture
def session_worker_paused(worker: Worker) -> Iterator[None]:
    """The shared worker stops consuming the session queue, so only this test's workers run steps."""
    queue = app.conf.task_default_queue
    app.control.cancel_consumer(queue, destination=[worker.name], reply=True)
    try:
        yield
    finally:
        app.control.add_consumer(queue, destination=[worker.name], reply=True)


@pytest.fixture
def workers(worker_logs: Path) -> Iterator[list[Worker]]:
    """Workers a test starts (append them); all stopped afterwards."""
    started: list[Worker] = []
    yield started
    for proc in started:
        proc.stop()
