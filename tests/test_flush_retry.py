"""The test database's flush survives a deadlock with a worker still finishing a step
(tests/support/flush.py): a real one, between the TRUNCATE and another connection."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tests.support.flush import deadlocked, flush_retrying

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL deadlock"),
]


DELIBERATE = "/* a deliberate deadlock, tests/test_flush_retry.py */"


def flush() -> None:
    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)


def deadlock_the_next_flush() -> threading.Thread:
    """Another connection holds a lock on the table the flush's TRUNCATE locks last; once the
    TRUNCATE waits for it (holding every other table), it asks for the table locked first."""
    tables = connection.introspection.django_table_names(only_existing=True, include_views=False)
    first, last = tables[0], tables[-1]
    holding = threading.Event()

    def run() -> None:
        from django.db import connection as own

        try:
            with own.cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(f'LOCK TABLE "{last}" IN ROW EXCLUSIVE MODE')
                holding.set()
                for _ in range(500):
                    cursor.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass "
                        "AND pid <> pg_backend_pid()",
                        [last],
                    )
                    if cursor.fetchone()[0]:
                        break
                    time.sleep(0.01)
                try:
                    # Named in the PostgreSQL log's DETAIL lines, beside its "deadlock detected".
                    cursor.execute(f'{DELIBERATE} LOCK TABLE "{first}" IN ROW EXCLUSIVE MODE')
                finally:
                    cursor.execute("ROLLBACK")
        finally:
            own.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert holding.wait(timeout=10)
    return thread


def test_a_flush_ended_by_a_deadlock_fails_when_not_tried_again() -> None:
    thread = deadlock_the_next_flush()
    with pytest.raises(CommandError) as failed:
        flush_retrying(flush, tries=1)
    thread.join(timeout=30)
    assert deadlocked(failed.value)


def test_a_flush_ended_by_a_deadlock_is_tried_again(caplog: Any) -> None:
    thread = deadlock_the_next_flush()
    flush_retrying(flush)
    thread.join(timeout=30)
    assert "flushing the test database deadlocked (try 1 of 5)" in caplog.text


def test_other_flush_errors_are_not_tried_again() -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise CommandError("not a deadlock")

    with pytest.raises(CommandError, match="not a deadlock"):
        flush_retrying(broken)
    assert len(calls) == 1


def test_a_failed_flush_names_its_cause() -> None:
    def broken() -> None:
        try:
            raise OSError("the cause")
        except OSError as exc:
            raise CommandError("Database couldn't be flushed.") from exc

    with pytest.raises(CommandError, match=r"couldn't be flushed\. Cause: OSError\('the cause'\)"):
        flush_retrying(broken)
