"""The audit log is append-only: on PostgreSQL a trigger refuses UPDATE and DELETE."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from ordinaut_site.audit import Actor, audit_record
from ordinaut_site.models import AuditLog

pytestmark = pytest.mark.django_db


@pytest.fixture
def entry() -> AuditLog:
    return audit_record(actor=Actor.system("tests"), action="test.action", subject_type="task", subject_id="x")


def test_audit_rows_cannot_be_updated(entry: AuditLog) -> None:
    assert connection.vendor == "postgresql", "the suite runs on PostgreSQL"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).update(action="tampered")
    entry.refresh_from_db()
    assert entry.action == "test.action"


def test_audit_rows_cannot_be_deleted(entry: AuditLog) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditLog.objects.filter(pk=entry.pk).delete()
    assert AuditLog.objects.filter(pk=entry.pk).exists()


def test_raw_sql_update_is_refused_too(entry: AuditLog) -> None:
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE ordinaut_auditlog SET actor_name = 'x' WHERE id = %s", [entry.pk])


def test_creating_a_task_through_the_api_is_audited(agent: Any) -> None:
    response = agent.client.post(
        "/tasks",
        {"title": "audited", "schedule_kind": "manual", "payload": {"pipeline": []}},
        format="json",
        HTTP_X_REQUEST_ID="req-audit-1",
    )
    assert response.status_code == 201
    row = AuditLog.objects.get(action="task.create", subject_id=response.json()["id"])
    assert (row.actor_kind, row.actor_name, row.request_id) == ("agent", agent.agent.name, "req-audit-1")
