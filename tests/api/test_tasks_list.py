"""GET /tasks: own tasks only (admins all), filters, search, newest first, pagination."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db


def _create(client: Any, title: str, kind: str = "manual", expr: str = "") -> str:
    body = {"title": title, "schedule_kind": kind, "schedule_expr": expr, "payload": echo_pipeline(1)}
    response = client.post("/tasks", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def test_lists_own_tasks_newest_first_with_pagination(agent: Any, make_agent: Any) -> None:
    ids = [_create(agent.client, f"task {i}") for i in range(3)]
    _create(make_agent().client, "someone else's")
    body = agent.client.get("/tasks?limit=2").json()
    assert body["count"] == 3
    assert [t["id"] for t in body["results"]] == ids[::-1][:2]
    assert body["next"]
    assert body["previous"] is None
    assert agent.client.get("/tasks/?limit=2&offset=2").json()["results"][0]["id"] == ids[0]


def test_filters_and_search(agent: Any) -> None:
    cron = _create(agent.client, "Morning briefing", "cron", "30 8 * * 1-5")
    _create(agent.client, "evening digest", "cron", "0 20 * * *")
    manual = _create(agent.client, "by hand")
    agent.client.post(f"/tasks/{cron}/pause")
    assert [t["id"] for t in agent.client.get("/tasks?status=paused").json()["results"]] == [cron]
    assert [t["id"] for t in agent.client.get("/tasks?schedule_kind=manual").json()["results"]] == [manual]
    assert [t["id"] for t in agent.client.get("/tasks?search=BRIEF").json()["results"]] == [cron]


def test_admin_sees_every_agents_tasks(agent: Any, make_agent: Any) -> None:
    _create(agent.client, "mine")
    assert make_agent(admin=True).client.get("/tasks").json()["count"] == 1


def test_bad_filter_is_400(agent: Any) -> None:
    response = agent.client.get("/tasks?status=sleeping")
    assert response.status_code == 400
    assert "status" in response.json()["error"]["fields"]


def test_needs_token_and_scope(make_agent: Any) -> None:
    assert APIClient().get("/tasks").status_code == 401
    assert make_agent(scopes=["runs:read"]).client.get("/tasks").status_code == 403
