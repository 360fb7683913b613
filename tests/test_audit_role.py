"""The audit log cannot be emptied: TRUNCATE is refused even to the owner, and the application's
least-privilege role (manage.py db_app_role) cannot UPDATE, DELETE, TRUNCATE or get round the
triggers, while it reads and writes everything else it needs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, transaction

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.models import AuditLog

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def app_role() -> Iterator[str]:
    if connection.vendor != "postgresql":
        pytest.skip("roles and triggers are PostgreSQL's")
    role = f"ordinaut_app_{uuid.uuid4().hex[:8]}"
    call_command("db_app_role", role)
    yield role
    with connection.cursor() as cursor:
        cursor.execute(f'DROP OWNED BY "{role}"')
        cursor.execute(f'DROP ROLE "{role}"')


def _connect_as(role: str) -> psycopg.Connection[Any]:
    settings = connection.settings_dict
    return psycopg.connect(
        host=settings.get("HOST") or "127.0.0.1",
        port=settings.get("PORT") or 5432,
        dbname=settings["NAME"],
        user=role,
        autocommit=True,
    )


@pytest.fixture
def audited() -> AuditLog:
    audit_record(actor=Actor.system("tests"), action="test.row", subject_type="test", subject_id="1", details={})
    return AuditLog.objects.get(action="test.row")


def test_truncate_is_refused_even_to_the_owner(audited: AuditLog) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's trigger")
    # This test session's connections say `ordinaut.audit_truncate = allow` (tests/conftest.py);
    # the application's do not.
    with pytest.raises(Exception, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL ordinaut.audit_truncate = 'deny'; TRUNCATE ordinaut_auditlog")
    assert AuditLog.objects.filter(pk=audited.pk).exists()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ordinaut_auditlog SET action = 'forged'",
        "DELETE FROM ordinaut_auditlog",
        "TRUNCATE ordinaut_auditlog",
        "ALTER TABLE ordinaut_auditlog DISABLE TRIGGER ordinaut_auditlog_append_only",
        "ALTER TABLE ordinaut_auditlog DISABLE TRIGGER ALL",
        "SET session_replication_role = replica",
        "DROP TRIGGER ordinaut_auditlog_append_only ON ordinaut_auditlog",
        "SET ordinaut.audit_truncate = 'allow'; TRUNCATE ordinaut_auditlog",
    ],
)
def test_the_app_role_cannot_change_or_empty_the_audit_log(app_role: str, audited: AuditLog, statement: str) -> None:
    with _connect_as(app_role) as conn, pytest.raises(psycopg.Error) as refused:
        conn.execute(statement)
    assert isinstance(refused.value, psycopg.errors.InsufficientPrivilege), refused.value
    audited.refresh_from_db()
    assert audited.action == "test.row"


def test_the_app_role_appends_to_the_audit_log_and_writes_the_other_tables(app_role: str, audited: AuditLog) -> None:
    with _connect_as(app_role) as conn:
        conn.execute(
            "INSERT INTO ordinaut_auditlog (at, actor_kind, actor_id, actor_name, action, subject_type, subject_id, "
            "details, request_id) SELECT at, actor_kind, actor_id, actor_name, 'test.again', subject_type, subject_id, "
            "details, request_id FROM ordinaut_auditlog WHERE id = %s",
            [audited.pk],
        )
        conn.execute("UPDATE tasks_task SET title = title")
        conn.execute("DELETE FROM ordinaut_idempotencyrecord WHERE false")
        assert conn.execute("SELECT count(*) FROM ordinaut_auditlog").fetchone() == (2,)
    assert AuditLog.objects.filter(action="test.again").exists()


def test_running_it_again_is_harmless(app_role: str) -> None:
    call_command("db_app_role", app_role)
    with _connect_as(app_role) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
