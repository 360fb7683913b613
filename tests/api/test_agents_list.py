"""GET /agents and GET /agents/{id}: every agent, newest first, for agents:admin."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.django_db


def test_list_is_paginated_newest_first(make_agent: Any) -> None:
    admin = make_agent(name="boss", admin=True)
    make_agent(name="first")
    make_agent(name="second")

    response = admin.client.get("/agents?limit=2")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [a["name"] for a in body["results"]] == ["second", "first"]
    assert body["next"]
    assert body["previous"] is None
    assert set(body["results"][0]) == {"id", "name", "scopes", "contact", "is_active", "created_at", "deactivated_at"}
    assert admin.client.get(body["next"]).json()["results"][0]["name"] == "boss"


def test_get_one_agent(make_agent: Any) -> None:
    manager = make_agent(scopes=["agents:admin"])
    other = make_agent(name="someone")
    response = manager.client.get(f"/agents/{other.agent.pk}")
    assert response.status_code == 200
    assert response.json()["name"] == "someone"


def test_unknown_agent_is_404(make_agent: Any) -> None:
    response = make_agent(scopes=["agents:admin"]).client.get("/agents/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_list_and_get_need_agents_admin(make_agent: Any) -> None:
    plain = make_agent(scopes=["tasks:read", "tasks:write", "runs:read"])
    assert plain.client.get("/agents").status_code == 403
    assert plain.client.get(f"/agents/{plain.agent.pk}").status_code == 403


def test_list_without_token_is_401(client: Any) -> None:
    assert client.get("/agents").status_code == 401


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=abc", "offset=-1", "offset=null", "limit=1&limit=2"])
def test_bad_pagination_is_400_naming_the_parameter(make_agent: Any, query: str) -> None:
    response = make_agent(admin=True).client.get(f"/agents?{query}")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {query.split("=")[0]}
