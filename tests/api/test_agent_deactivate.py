"""DELETE /agents/{id}: the agent stops authenticating; nothing is erased, the audit trail stays."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.models import Agent, AuditLog

pytestmark = pytest.mark.django_db


def test_deactivated_agent_can_no_longer_authenticate(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    target = make_agent()
    assert target.client.get("/agents/me").status_code == 200

    response = admin.client.delete(f"/agents/{target.agent.pk}")

    assert response.status_code == 204
    assert target.client.get("/agents/me").status_code == 401
    target.agent.refresh_from_db()
    assert target.agent.is_active is False
    assert target.agent.deactivated_at is not None
    listed = admin.client.get(f"/agents/{target.agent.pk}").json()
    assert listed["is_active"] is False


def test_deactivation_keeps_the_agent_and_its_audit_trail(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    target = make_agent()
    before = AuditLog.objects.filter(subject_id=str(target.agent.pk)).count()

    admin.client.delete(f"/agents/{target.agent.pk}")
    admin.client.delete(f"/agents/{target.agent.pk}")  # twice: nothing more happens

    assert Agent.objects.filter(pk=target.agent.pk).exists()
    rows = AuditLog.objects.filter(subject_id=str(target.agent.pk))
    assert rows.count() == before + 1
    assert rows.filter(action="agent.deactivate", actor_name=admin.agent.name).count() == 1


def test_agents_admin_cannot_deactivate_a_stronger_agent(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin"])
    admin = make_agent(admin=True)
    response = manager.client.delete(f"/agents/{admin.agent.pk}")
    assert response.status_code == 403
    assert Agent.objects.get(pk=admin.agent.pk).is_active


def test_deactivate_unknown_agent_is_404(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    assert admin.client.delete("/agents/00000000-0000-0000-0000-000000000000").status_code == 404


def test_deactivate_needs_agents_admin(make_agent: Any) -> None:
    plain = make_agent(scopes=["tasks:write"])
    other = make_agent()
    assert plain.client.delete(f"/agents/{other.agent.pk}").status_code == 403
    assert Agent.objects.get(pk=other.agent.pk).is_active
