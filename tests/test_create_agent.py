"""`manage.py create_agent`: creates the agent and prints a working token alone on the last line."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from ordinaut_site.models import ALL_SCOPES, Agent, AgentToken, AuditLog
from ordinaut_site.services import token_authenticate

pytestmark = pytest.mark.django_db


def test_prints_a_working_token_on_the_last_line() -> None:
    out = StringIO()
    call_command("create_agent", "briefing-bot", "--scopes", "tasks:read,tasks:write", stdout=out, stderr=StringIO())

    token = out.getvalue().strip().splitlines()[-1]
    found = token_authenticate(token)
    assert found is not None
    agent, _ = found
    assert agent.name == "briefing-bot"
    assert agent.scopes == ["tasks:read", "tasks:write"]
    stored = AgentToken.objects.get(agent=agent)
    assert token not in stored.secret_hash
    assert stored.prefix in token
    assert AuditLog.objects.filter(action="agent.create", subject_id=str(agent.pk)).exists()


def test_admin_flag_grants_every_scope() -> None:
    call_command("create_agent", "root-bot", "--admin", stdout=StringIO(), stderr=StringIO())
    assert sorted(Agent.objects.get(name="root-bot").scopes) == sorted(ALL_SCOPES)


def test_unknown_scope_and_duplicate_name_are_clear_errors() -> None:
    with pytest.raises(CommandError, match="unknown scope"):
        call_command("create_agent", "x", "--scopes", "tasks:destroy", stdout=StringIO(), stderr=StringIO())
    call_command("create_agent", "dup", "--scopes", "tasks:read", stdout=StringIO(), stderr=StringIO())
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_agent", "dup", "--scopes", "tasks:read", stdout=StringIO(), stderr=StringIO())


def test_revoked_or_expired_tokens_do_not_authenticate() -> None:
    out = StringIO()
    call_command("create_agent", "short-lived", "--scopes", "tasks:read", stdout=out, stderr=StringIO())
    token = out.getvalue().strip().splitlines()[-1]
    AgentToken.objects.update(revoked_at="2026-01-01T00:00:00Z")
    assert token_authenticate(token) is None
