"""Fixtures of the scheduler's tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection, transaction

from tasks.models import Task


@pytest.fixture
def task_row_lock() -> Iterator[Any]:
    """task_row_lock(task): another connection holds the task's row lock (a stuck transaction)
    until the returned event is set (or the test ends)."""
    release = threading.Event()
    threads: list[threading.Thread] = []

    def hold(task: Task) -> threading.Event:
        locked = threading.Event()

        def run() -> None:
            try:
                with transaction.atomic():
                    Task.objects.select_for_update().get(pk=task.pk)
                    locked.set()
                    release.wait(timeout=120)
            finally:
                connection.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        assert locked.wait(timeout=10)
        return release

    yield hold
    release.set()
    for thread in threads:
        thread.join(timeout=10)
