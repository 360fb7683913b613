"""POST /agents: an agent with scopes and its first token, shown once; no one grants what it lacks."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from ordinaut_site.models import Agent, AgentToken, AuditLog

pytestmark = pytest.mark.django_db


def test_admin_creates_an_agent_whose_token_works(make_agent: Any) -> None:
    admin = make_agent(admin=True)

    response = admin.client.post(
        "/agents", {"name": "reporter", "scopes": ["tasks:read", "runs:read"], "contact": "ops@example.com"}
    )

    assert response.status_code == 201
    body = response.json()
    assert body["agent"]["name"] == "reporter"
    assert body["agent"]["scopes"] == ["runs:read", "tasks:read"]
    assert body["agent"]["contact"] == "ops@example.com"
    assert body["token"].startswith(f"ord_{body['prefix']}_")
    new_client = APIClient()
    new_client.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert new_client.get("/agents/me").json()["name"] == "reporter"
    token = AgentToken.objects.get(prefix=body["prefix"])
    assert body["token"] not in token.secret_hash, "only a hash is stored"


def test_creation_is_audited_with_the_calling_agent(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    response = admin.client.post("/agents", {"name": "audited", "scopes": []}, HTTP_X_REQUEST_ID="req-create-1")
    agent_id = response.json()["agent"]["id"]
    actions = AuditLog.objects.filter(subject_type="agent", subject_id=agent_id).values_list("action", flat=True)
    assert sorted(actions) == ["agent.create", "token.issue"]
    row = AuditLog.objects.get(subject_id=agent_id, action="agent.create")
    assert (row.actor_kind, row.actor_name, row.request_id) == ("agent", admin.agent.name, "req-create-1")


def test_agents_admin_grants_scopes_it_holds(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin", "tasks:read", "tasks:write"])
    response = manager.client.post("/agents", {"name": "helper", "scopes": ["tasks:read", "agents:admin"]})
    assert response.status_code == 201


@pytest.mark.parametrize("scopes", [["admin"], ["tasks:read", "runs:write"]])
def test_agents_admin_cannot_grant_scopes_it_lacks(make_agent: Any, scopes: list[str]) -> None:
    manager = make_agent(scopes=["agents:admin", "tasks:read"])

    response = manager.client.post("/agents", {"name": "stronger", "scopes": scopes})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert not Agent.objects.filter(name="stronger").exists()


def test_only_admin_grants_admin(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    response = admin.client.post("/agents", {"name": "second-admin", "scopes": ["admin"]})
    assert response.status_code == 201
    assert response.json()["agent"]["scopes"] == ["admin"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scopes": []}, "name"),
        ({"name": "", "scopes": []}, "name"),
        ({"name": "x" * 101, "scopes": []}, "name"),
        ({"name": "x"}, "scopes"),
        ({"name": "x", "scopes": ["tasks:delete-everything"]}, "scopes.0"),
        ({"name": "x", "scopes": "tasks:read"}, "scopes"),
        ({"name": "x", "scopes": [], "contact": "c" * 201}, "contact"),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(make_agent: Any, body: dict[str, Any], field: str) -> None:
    response = make_agent(admin=True).client.post("/agents", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_duplicate_name_is_409(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    admin.client.post("/agents", {"name": "twin", "scopes": []}, format="json")
    response = admin.client.post("/agents", {"name": "twin", "scopes": []}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_without_agents_admin_is_403(make_agent: Any) -> None:
    response = make_agent(scopes=["tasks:read", "tasks:write"]).client.post("/agents", {"name": "x", "scopes": []})
    assert response.status_code == 403


def test_without_token_is_401() -> None:
    assert APIClient().post("/agents", {"name": "x", "scopes": []}, format="json").status_code == 401
