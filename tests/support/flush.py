"""Transactional tests empty the database with one TRUNCATE of every table after each test. The
session's real worker may still be finishing a step of the test's last run at that moment (a
run created in-process sends its first step to the session queue): its transaction holds row
locks on one table and asks for another that the TRUNCATE has locked already, and PostgreSQL
ends one of the two with "deadlock detected". When the TRUNCATE is the one ended, the flush is
tried again (the worker's transaction has finished by then), instead of failing the test."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import CommandError
from django.test import TransactionTestCase

logger = logging.getLogger(__name__)

FLUSH_TRIES = 5
DEADLOCK_DETECTED = "40P01"


def deadlocked(exc: BaseException) -> bool:
    """Was the error, or one of its causes, PostgreSQL's deadlock_detected?"""
    seen: BaseException | None = exc
    while seen is not None:
        if getattr(seen, "sqlstate", None) == DEADLOCK_DETECTED or getattr(seen, "pgcode", None) == DEADLOCK_DETECTED:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def flush_retrying(flush: Any, tries: int = FLUSH_TRIES) -> None:
    """Call flush(); when it is ended by a deadlock, call it again (up to `tries` in all)."""
    for attempt in range(1, tries + 1):
        try:
            flush()
            return
        except CommandError as exc:
            if attempt == tries or not deadlocked(exc):
                # Django's message names no cause; the short test summary then shows it.
                raise CommandError(f"{exc} Cause: {exc.__cause__!r}") from exc
            logger.warning("flushing the test database deadlocked (try %d of %d); trying again", attempt, tries)
            time.sleep(0.1 * attempt)


def install() -> None:
    """Make every transactional test's flush retry after a deadlock (once per session)."""
    original = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]
    if getattr(original, "retries_deadlocks", False):
        return

    def _fixture_teardown(self: TransactionTestCase) -> None:
        flush_retrying(lambda: original(self))

    _fixture_teardown.retries_deadlocks = True  # type: ignore[attr-defined]
    TransactionTestCase._fixture_teardown = _fixture_teardown  # type: ignore[attr-defined]
