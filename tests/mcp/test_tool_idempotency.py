"""MCP idempotency keys and tool arguments read from the REST serializers.

create_task, run_now and publish_event take `idempotency_key` as their REST twins take the
Idempotency-Key header: the same store (IdempotencyRecord), per agent and per tool; the same key
with the same arguments answers the first result, with other arguments a conflict; a call that
failed keeps nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from rest_framework import serializers

from ordinaut_site.mcp_server import mcp, serializer_changes_model, serializer_parameters, writable_fields
from ordinaut_site.models import IdempotencyRecord
from runs.models import Run
from tasks.api import TaskSerializer
from tasks.models import Event, Task
from tests.support.pipelines import echo_pipeline

pytestmark = pytest.mark.django_db

MANUAL = {"title": "t", "schedule_kind": "manual", "payload": echo_pipeline(1)}


def _schema(name: str) -> dict[str, Any]:
    tool = next(tool for tool in async_to_sync(mcp.list_tools)() if tool.name == name)
    return tool.input_schema


# --- create_task -------------------------------------------------------------------------------


def test_create_task_with_the_same_key_and_arguments_answers_the_first_task(tools: Any) -> None:
    first = tools.ok("create_task", **MANUAL, idempotency_key="create-1")
    again = tools.ok("create_task", **MANUAL, idempotency_key="create-1")

    assert again == first
    assert Task.objects.count() == 1
    record = IdempotencyRecord.objects.get(key="create-1")
    assert record.endpoint == "MCP create_task"
    assert isinstance(record.response_body, dict)
    assert record.response_body["id"] == first["id"]


def test_create_task_with_the_key_and_other_arguments_is_a_conflict(tools: Any) -> None:
    tools.ok("create_task", **MANUAL, idempotency_key="create-2")
    error = tools.error("create_task", **{**MANUAL, "title": "another"}, idempotency_key="create-2")

    assert error["code"] == "conflict"
    assert list(error["fields"]) == ["idempotency_key"]
    assert list(Task.objects.values_list("title", flat=True)) == ["t"]


def test_without_a_key_each_call_creates(tools: Any) -> None:
    tools.ok("create_task", **MANUAL)
    tools.ok("create_task", **MANUAL)

    assert Task.objects.count() == 2
    assert not IdempotencyRecord.objects.exists()


def test_a_failed_call_keeps_no_key_and_the_corrected_retry_creates(tools: Any) -> None:
    error = tools.error("create_task", **{**MANUAL, "priority": 42}, idempotency_key="create-3")
    assert error["code"] == "validation_error"
    assert "priority" in error["fields"]
    assert not IdempotencyRecord.objects.exists()

    created = tools.ok("create_task", **MANUAL, idempotency_key="create-3")
    assert Task.objects.get().pk.hex == created["id"].replace("-", "")


def test_keys_are_per_agent(tools: Any, tools_as: Any) -> None:
    mine = tools.ok("create_task", **MANUAL, idempotency_key="shared-key")
    theirs = tools_as().ok("create_task", **MANUAL, idempotency_key="shared-key")

    assert mine["id"] != theirs["id"]
    assert Task.objects.count() == 2


def test_a_key_with_spaces_is_a_validation_error_naming_it(tools: Any) -> None:
    error = tools.error("create_task", **MANUAL, idempotency_key="has spaces")

    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["idempotency_key"]
    assert not Task.objects.exists()


def test_the_same_key_over_rest_is_another_endpoint(tools: Any, agent: Any) -> None:
    over_mcp = tools.ok("create_task", **MANUAL, idempotency_key="both-ways")
    over_rest = agent.client.post("/tasks", MANUAL, format="json", HTTP_IDEMPOTENCY_KEY="both-ways")

    assert over_rest.status_code == 201
    assert over_rest.json()["id"] != over_mcp["id"]
    assert set(IdempotencyRecord.objects.values_list("endpoint", flat=True)) == {"MCP create_task", "POST /tasks"}


# --- run_now and publish_event ------------------------------------------------------------------


def test_run_now_with_the_same_key_answers_the_first_run(tools: Any) -> None:
    task = tools.ok("create_task", **MANUAL)

    first = tools.ok("run_now", task_id=task["id"], params={"n": 1}, idempotency_key="run-1")
    again = tools.ok("run_now", task_id=task["id"], params={"n": 1}, idempotency_key="run-1")
    other = tools.error("run_now", task_id=task["id"], params={"n": 2}, idempotency_key="run-1")

    assert again["id"] == first["id"]
    assert other["code"] == "conflict"
    assert Run.objects.filter(task_id=task["id"]).count() == 1


def test_run_now_of_another_task_with_the_key_is_a_conflict(tools: Any) -> None:
    one = tools.ok("create_task", **MANUAL)
    two = tools.ok("create_task", **{**MANUAL, "title": "two"})

    tools.ok("run_now", task_id=one["id"], idempotency_key="run-2")
    error = tools.error("run_now", task_id=two["id"], idempotency_key="run-2")

    assert error["code"] == "conflict"
    assert not Run.objects.filter(task_id=two["id"]).exists()


def test_publish_event_keys_use_the_same_store(tools: Any) -> None:
    first = tools.ok("publish_event", topic="mail.received", payload={"n": 1}, idempotency_key="event-1")
    again = tools.ok("publish_event", topic="mail.received", payload={"n": 1}, idempotency_key="event-1")
    other = tools.error("publish_event", topic="mail.received", payload={"n": 2}, idempotency_key="event-1")

    assert again == first
    assert other["code"] == "conflict"
    assert Event.objects.count() == 1
    assert IdempotencyRecord.objects.get(key="event-1").endpoint == "MCP publish_event"


@pytest.mark.parametrize("name", ["create_task", "run_now", "publish_event"])
def test_each_tool_whose_rest_twin_is_idempotent_takes_a_key(name: str) -> None:
    schema = _schema(name)["properties"]["idempotency_key"]

    assert "same key" in schema["description"]
    assert "idempotency_key" not in _schema(name).get("required", [])


# --- arguments from the serializer ----------------------------------------------------------------


def test_create_task_takes_exactly_the_serializers_writable_fields() -> None:
    schema = _schema("create_task")
    fields = writable_fields(TaskSerializer)

    assert set(schema["properties"]) == set(fields) | {"idempotency_key"}
    assert set(schema["required"]) == {name for name, field in fields.items() if field.required}
    for name, field in fields.items():
        assert schema["properties"][name]["description"] == str(field.help_text), name


def test_update_task_changes_are_the_same_fields_all_optional() -> None:
    schema = _schema("update_task")
    changes = schema["$defs"]["TaskChanges"]

    assert set(changes["properties"]) == set(writable_fields(TaskSerializer))
    assert not changes.get("required")
    assert changes["additionalProperties"] is False


class _Example(serializers.Serializer):
    name = serializers.CharField(max_length=20, help_text="A name.")
    size = serializers.IntegerField(min_value=1, max_value=9, required=False, help_text="How big.")
    kind = serializers.ChoiceField(choices=["a", "b"], help_text="Which.")
    note = serializers.CharField(required=False, allow_null=True, help_text="Anything.")
    made = serializers.DateTimeField(read_only=True)


def test_a_serializer_becomes_keyword_parameters_with_its_limits_published() -> None:
    parameters = {parameter.name: parameter for parameter in serializer_parameters(_Example)}

    assert list(parameters) == ["name", "size", "kind", "note"]  # read-only fields are not arguments
    assert parameters["name"].default is parameters["name"].empty
    assert parameters["size"].default is None
    model = serializer_changes_model(_Example, "ExampleChanges")
    properties = model.model_json_schema()["properties"]
    assert properties["size"]["maximum"] == 9
    assert properties["size"]["minimum"] == 1
    assert properties["name"]["maxLength"] == 20
    assert properties["kind"]["anyOf"][0]["enum"] == ["a", "b"]
    assert properties["note"]["description"] == "Anything."


# --- unknown arguments ---------------------------------------------------------------------------


def test_an_unknown_argument_is_a_validation_error_naming_it_not_ignored(tools: Any) -> None:
    task = tools.ok("create_task", **MANUAL)
    tools.ok("run_now", task_id=task["id"])

    error = tools.error("list_runs", task=task["id"])  # REST's name; the tool's is task_id

    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["task"]
    assert "known:" in error["fields"]["task"][0]
    assert "task_id" in error["fields"]["task"][0]
    assert tools.ok("list_runs", task_id=task["id"])["count"] == 1


def test_a_misspelt_create_task_argument_creates_nothing(tools: Any) -> None:
    error = tools.error("create_task", **MANUAL, overlapp="queue")

    assert list(error["fields"]) == ["overlapp"]
    assert not Task.objects.exists()
