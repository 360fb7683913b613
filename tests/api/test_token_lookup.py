"""The bearer-token lookup (ordinaut_site/services.py `_token_lookup`): one plain statement built once,
loading the token and its agent as the ORM's select_related query did; no cache, so a revocation,
an expiry or a deactivation refuses the very next request."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import Agent, AgentToken
from ordinaut_site.services import _token_lookup, agent_deactivate, token_authenticate, token_issue, token_revoke

pytestmark = pytest.mark.django_db


def _fields(instance: Any) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_the_lookup_loads_what_the_orm_loads(make_agent: Any) -> None:
    handle = make_agent(scopes=["tasks:read", "tasks:write"])
    expires = timezone.now() + timedelta(days=3)
    token, _raw = token_issue(agent=handle.agent, actor=SYSTEM, expires_at=expires, label="ci", scopes=["tasks:read"])
    AgentToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())

    loaded = _token_lookup(token.prefix)
    expected = AgentToken.objects.select_related("agent").get(prefix=token.prefix)
    assert loaded is not None
    assert _fields(loaded) == _fields(expected)
    assert _fields(loaded.agent) == _fields(expected.agent)
    assert loaded.scopes == ["tasks:read"]
    assert loaded.agent.scopes == ["tasks:read", "tasks:write"]
    assert loaded.expires_at == expires
    assert loaded.expires_at.tzinfo is not None
    assert not loaded._state.adding
    assert not loaded.agent._state.adding
    with CaptureQueriesContext(connection) as captured:
        assert loaded.agent.pk == handle.agent.pk
        loaded.save(update_fields=["label"])  # a loaded row saves as an UPDATE, like one the ORM read
    assert [q["sql"].split(" ", 1)[0] for q in captured.captured_queries] == ["UPDATE"]
    assert _token_lookup("zzzzzzzz") is None


def test_authentication_is_one_statement(make_agent: Any) -> None:
    handle = make_agent()
    token_authenticate(handle.token)  # last_used_at written now; not again within the minute
    with CaptureQueriesContext(connection) as captured:
        found = token_authenticate(handle.token)
    assert found is not None
    assert found[0].pk == handle.agent.pk
    assert len(captured.captured_queries) == 1


def test_a_narrowed_token_narrows_a_fresh_agent_each_time(make_agent: Any) -> None:
    handle = make_agent(scopes=["tasks:read", "tasks:write"])
    _, raw = token_issue(agent=handle.agent, actor=SYSTEM, scopes=["tasks:read"])
    first, second = token_authenticate(raw), token_authenticate(handle.token)
    assert first is not None
    assert second is not None
    assert first[0].scopes == ["tasks:read"]
    assert sorted(second[0].scopes) == ["tasks:read", "tasks:write"]


def test_revocation_expiry_and_deactivation_refuse_the_next_request_at_once(make_agent: Any) -> None:
    revoked, expired, deactivated = make_agent(), make_agent(), make_agent()
    for handle in (revoked, expired, deactivated):
        assert token_authenticate(handle.token) is not None

    token_revoke(token=AgentToken.objects.get(agent=revoked.agent), actor=SYSTEM)
    AgentToken.objects.filter(agent=expired.agent).update(expires_at=timezone.now() - timedelta(seconds=1))
    agent_deactivate(agent=Agent.objects.get(pk=deactivated.agent.pk), actor=SYSTEM)

    for handle in (revoked, expired, deactivated):
        assert token_authenticate(handle.token) is None
        assert handle.client.get("/tasks").status_code == 401


def test_a_wrong_secret_with_a_real_prefix_is_refused(make_agent: Any) -> None:
    handle = make_agent()
    forged = handle.token[:-4] + ("AAAA" if not handle.token.endswith("AAAA") else "BBBB")
    assert token_authenticate(forged) is None
