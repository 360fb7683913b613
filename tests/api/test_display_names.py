"""Names people read in the admin and in lists: no bidi overrides, invisible or control characters."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.audit import Actor
from ordinaut_site.errors import ValidationFailed
from ordinaut_site.models import Agent
from ordinaut_site.parsers import display_name_problem
from ordinaut_site.services import agent_create
from tasks.models import Task
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db

DISGUISED = ["invoice\u202egnp.exe", "pay\u200broll", "a\u2066b\u2069", "\ufeffstart", "line\nbreak", "bell\x07"]


@pytest.mark.parametrize("title", DISGUISED)
def test_a_task_title_that_reorders_or_hides_text_is_a_400_and_creates_nothing(agent: Any, title: str) -> None:
    body = {"title": title, "schedule_kind": "manual", "payload": echo_pipeline(1)}

    response = agent.client.post("/tasks", body, format="json")

    assert response.status_code == 400, response.json()
    assert list(response.json()["error"]["fields"]) == ["title"]
    assert "U+" in response.json()["error"]["fields"]["title"][0]
    assert not Task.objects.exists()


def test_ordinary_titles_pass_emoji_sequences_and_scripts_included(agent: Any) -> None:
    for title in ["Briefing \U0001f468\u200d\U0001f4bb", "Раписание", "موجز الصباح", "朝のブリーフィング"]:
        response = agent.client.post(
            "/tasks", {"title": title, "schedule_kind": "manual", "payload": echo_pipeline(1)}, format="json"
        )
        assert response.status_code == 201, response.json()
    assert Task.objects.count() == 4


def test_a_renamed_task_is_checked_too(agent: Any) -> None:
    created = agent.client.post(
        "/tasks", {"title": "ok", "schedule_kind": "manual", "payload": echo_pipeline(1)}, format="json"
    ).json()

    response = agent.client.patch(f"/tasks/{created['id']}", {"title": "o\u202ek"}, format="json")

    assert response.status_code == 400
    assert Task.objects.get(pk=created["id"]).title == "ok"


def test_agent_names_are_checked() -> None:
    with pytest.raises(ValidationFailed) as refused:
        agent_create(name="admin\u202e", scopes=[], actor=Actor.system("tests"))
    assert "name" in (refused.value.fields or {})
    assert not Agent.objects.filter(name__startswith="admin").exists()


def test_the_check_names_the_character_and_where() -> None:
    assert display_name_problem("ab\u202ec") == "holds U+202E at position 2, which reorders or hides text"
    assert display_name_problem("plain name") is None
