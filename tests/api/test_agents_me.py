"""GET /agents/me: the calling agent, its scopes and the token it used; any scope will do."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_me_shows_the_agent_and_its_token_prefix(make_agent: Any) -> None:
    handle = make_agent(scopes=["tasks:read"])

    response = handle.client.get("/agents/me")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(handle.agent.pk)
    assert body["name"] == handle.agent.name
    assert body["scopes"] == ["tasks:read"]
    assert body["is_active"] is True
    assert body["token"]["prefix"] == handle.token.split("_")[1]
    assert body["token"]["active"] is True
    assert "secret_hash" not in str(body)
    assert handle.token not in str(body)


def test_me_needs_no_particular_scope(make_agent: Any) -> None:
    assert make_agent(scopes=[]).client.get("/agents/me").status_code == 200


def test_me_with_trailing_slash(agent: Any) -> None:
    assert agent.client.get("/agents/me/").status_code == 200


def test_me_without_token_is_401() -> None:
    response = APIClient().get("/agents/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")
