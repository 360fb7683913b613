"""The agents admin: operators' edits of agents and tokens go through the services and are audited."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from ordinaut_site.audit import SYSTEM
from ordinaut_site.models import Agent, AgentToken, AuditLog
from ordinaut_site.services import agent_create, token_issue

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db: Any) -> Any:
    return get_user_model().objects.create_superuser("operator", "op@example.com", "pw-not-used")


@pytest.fixture
def operator_client(operator: Any) -> Client:
    client = Client()
    client.force_login(operator)
    return client


@pytest.fixture
def agent(db: Any) -> Agent:
    agent = agent_create(name="mailer", scopes=["tasks:read", "tasks:write"], actor=SYSTEM)
    token_issue(agent=agent, actor=SYSTEM)
    return agent


def agent_form(agent: Agent, **changes: Any) -> dict[str, Any]:
    """The agent change form as the browser posts it, with its (read-only) token inline."""
    tokens = list(agent.tokens.all())
    data: dict[str, Any] = {
        "name": agent.name,
        "scopes": json.dumps(agent.scopes),
        "initial-scopes": json.dumps(agent.scopes),  # scopes has a callable default: Django posts its initial too
        "contact": agent.contact,
        "tool_calls_per_day": "",
        "cost_units_per_day": "",
        "tokens-TOTAL_FORMS": str(len(tokens)),
        "tokens-INITIAL_FORMS": str(len(tokens)),
        "tokens-MIN_NUM_FORMS": "0",
        "tokens-MAX_NUM_FORMS": "1000",
    }
    if agent.is_active:
        data["is_active"] = "on"
    for index, token in enumerate(tokens):
        data[f"tokens-{index}-id"] = str(token.pk)
        data[f"tokens-{index}-agent"] = str(agent.pk)
    data.update(changes)
    return {name: value for name, value in data.items() if value is not None}


def post_agent(client: Client, agent: Agent, **changes: Any) -> Any:
    response = client.post(f"/admin/ordinaut/agent/{agent.pk}/change/", agent_form(agent, **changes))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    return response


def test_switching_an_agent_off_deactivates_it_through_the_service(
    operator: Any, operator_client: Client, agent: Agent
) -> None:
    post_agent(operator_client, agent, is_active=None)

    agent.refresh_from_db()
    assert agent.is_active is False
    assert agent.deactivated_at is not None
    row = AuditLog.objects.get(action="agent.deactivate", subject_id=str(agent.pk))
    assert (row.actor_kind, row.actor_name) == ("user", "operator")
    assert not AuditLog.objects.filter(action="agent.update", subject_id=str(agent.pk)).exists()


def test_switching_it_on_again_reactivates_it(operator_client: Client, agent: Agent) -> None:
    post_agent(operator_client, agent, is_active=None)
    agent.refresh_from_db()

    post_agent(operator_client, agent, is_active="on")

    agent.refresh_from_db()
    assert (agent.is_active, agent.deactivated_at) == (True, None)
    assert AuditLog.objects.filter(action="agent.reactivate", subject_id=str(agent.pk)).count() == 1


def test_other_edits_are_an_audited_update_naming_the_fields(operator_client: Client, agent: Agent) -> None:
    post_agent(operator_client, agent, contact="ops@example.com", scopes='["tasks:read"]')

    agent.refresh_from_db()
    assert (agent.contact, agent.scopes, agent.is_active) == ("ops@example.com", ["tasks:read"], True)
    row = AuditLog.objects.get(action="agent.update", subject_id=str(agent.pk))
    assert row.details == {"fields": ["contact", "scopes"], "scopes": ["tasks:read"]}
    assert not AuditLog.objects.filter(action="agent.deactivate").exists()


def test_saving_an_agent_unchanged_writes_no_audit_row(operator_client: Client, agent: Agent) -> None:
    before = AuditLog.objects.count()
    post_agent(operator_client, agent)
    assert AuditLog.objects.count() == before


def token_form(token: AgentToken, **changes: Any) -> dict[str, Any]:
    expires = token.expires_at
    data = {
        "label": token.label,
        "expires_at_0": expires.strftime("%Y-%m-%d") if expires else "",
        "expires_at_1": expires.strftime("%H:%M:%S") if expires else "",
        "scopes": '["admin"]',  # read-only in the form: ignored
    }
    data.update(changes)
    return data


def test_token_label_and_expiry_changes_are_audited_and_its_scopes_cannot_change(
    operator: Any, operator_client: Client, agent: Agent
) -> None:
    token, _ = token_issue(agent=agent, actor=SYSTEM, scopes=["tasks:read"], label="ci")
    expires = (timezone.now() + timedelta(days=3)).replace(microsecond=0)

    response = operator_client.post(
        f"/admin/ordinaut/agenttoken/{token.pk}/change/",
        token_form(token, label="nightly", expires_at_0=f"{expires:%Y-%m-%d}", expires_at_1=f"{expires:%H:%M:%S}"),
    )

    assert response.status_code == 302
    token.refresh_from_db()
    assert (token.label, token.expires_at, token.scopes) == ("nightly", expires, ["tasks:read"])
    row = AuditLog.objects.get(action="token.update")
    assert (row.actor_kind, row.actor_name, row.subject_id) == ("user", "operator", str(agent.pk))
    assert row.details == {
        "prefix": token.prefix,
        "changes": {"label": ["ci", "nightly"], "expires_at": [None, expires.isoformat()]},
    }


def test_saving_a_token_unchanged_writes_no_audit_row(operator_client: Client, agent: Agent) -> None:
    token = agent.tokens.get()
    response = operator_client.post(f"/admin/ordinaut/agenttoken/{token.pk}/change/", token_form(token))
    assert response.status_code == 302
    assert not AuditLog.objects.filter(action="token.update").exists()


def test_the_token_form_shows_scopes_read_only(operator_client: Client, agent: Agent) -> None:
    token = agent.tokens.get()
    form = operator_client.get(f"/admin/ordinaut/agenttoken/{token.pk}/change/").context["adminform"].form
    assert set(form.fields) == {"label", "expires_at"}


def test_an_agent_added_in_the_admin_is_created_by_the_service_and_audited(operator_client: Client) -> None:
    response = operator_client.post(
        "/admin/ordinaut/agent/add/",
        {
            "name": "  reporter ",
            "scopes": json.dumps(["runs:read", "tasks:read", "runs:read"]),
            "initial-scopes": "[]",
            "contact": "ops@example.com",
            "is_active": "on",
            "tool_calls_per_day": "50",
            "cost_units_per_day": "",
            "tokens-TOTAL_FORMS": "0",
            "tokens-INITIAL_FORMS": "0",
            "tokens-MIN_NUM_FORMS": "0",
            "tokens-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    agent = Agent.objects.get(name="reporter")
    assert (agent.scopes, agent.contact, agent.tool_calls_per_day) == (
        ["runs:read", "tasks:read"],
        "ops@example.com",
        50,
    )
    created = AuditLog.objects.get(action="agent.create", subject_id=str(agent.pk))
    assert (created.actor_kind, created.actor_name, created.details) == (
        "user",
        "operator",
        {"scopes": ["runs:read", "tasks:read"]},
    ), "agent_create's own audit row, naming the operator"
