"""Bounded evaluation of agents' JMESPath (issue 13): a budget of node visits and of built items on
every template, `if`, task condition and dry-run, refused at the API, skipped at fire time, a
permanent step error in the worker; normal expressions are unaffected."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from django.db import transaction
from django.test import override_settings

from ordinaut_site.errors import ExpressionTooExpensive, TemplateFailed
from pipelines.dryrun import pipeline_dry_run
from pipelines.templates import (
    ExpressionBudget,
    condition_error,
    condition_evaluate,
    expr_evaluate,
    render,
    template_errors,
)
from runs.models import Run
from tasks import services
from tasks.models import Task
from tests.support.events import clean_stream, make_consumer, publish
from tests.support.pipelines import manual_task_body, run_in_process

STAGES = 25
# Each `[@,@]` stage makes a list holding the previous value twice (shared, so building it is
# cheap), and writing it out (a render, a stored input, a response) doubles each stage.
DOUBLING = "@" + "|[@,@]" * STAGES


def written_out_size(base_items: int, stages: int) -> int:
    """Items of DOUBLING over a value of base_items items, written out: s(k) = 1 + 2 s(k-1)."""
    size = base_items
    for _ in range(stages):
        size = 1 + 2 * size
    return size


def test_the_doubling_expression_really_explodes_without_a_budget() -> None:
    assert 150 <= len(DOUBLING) <= 160
    # Over the smallest object ({} is one item) it writes out to 2^26 - 1 items: 67 million.
    assert written_out_size(1, STAGES) == 2 ** (STAGES + 1) - 1 > 600 * ExpressionBudget().max_items


# --- The interpreter's budget ------------------------------------------------------------------


def test_the_doubling_expression_stops_on_the_items_budget() -> None:
    with pytest.raises(ExpressionTooExpensive) as caught:
        expr_evaluate(DOUBLING, {"params": {"a": 1}})
    assert caught.value.code == "expression_too_expensive"
    assert caught.value.budget == "ORDINAUT_EXPR_MAX_ITEMS"
    assert "ORDINAUT_EXPR_MAX_ITEMS (100000)" in caught.value.message
    assert caught.value.retryable is False
    assert isinstance(caught.value, TemplateFailed)  # every existing template-error path catches it


def test_the_budget_stops_within_a_few_stages_past_the_limit() -> None:
    budget = ExpressionBudget(max_items=1000)
    with pytest.raises(ExpressionTooExpensive):
        expr_evaluate(DOUBLING, {}, budget)
    # It stops at the first stage whose written-out size is over the limit (2^10 - 1 > 1000: the
    # ninth), having built two elements a stage; the pipes of all 25 stages are entered first.
    assert budget.items == 2 * 9
    assert budget.steps == STAGES + 1 + 3 * 9


def test_materialised_doubling_and_string_doubling_stop_too() -> None:
    flattened = "[@,@]" + "|[@,@][]" * 30  # a real list that doubles in length each stage
    with pytest.raises(ExpressionTooExpensive, match="ORDINAUT_EXPR_MAX_ITEMS"):
        expr_evaluate(flattened, {"a": 1})
    strings = "to_string(@)" + "|join('', [@,@])" * 30  # a string that doubles each stage
    with pytest.raises(ExpressionTooExpensive, match="ORDINAUT_EXPR_MAX_ITEMS"):
        expr_evaluate(strings, {"a": "x"})


def test_node_visits_are_charged() -> None:
    data = {"items": list(range(5000))}
    with pytest.raises(ExpressionTooExpensive, match="ORDINAUT_EXPR_MAX_STEPS") as caught:
        expr_evaluate("items[?@ > `10`]", data, ExpressionBudget(max_steps=1000))
    assert caught.value.budget == "ORDINAUT_EXPR_MAX_STEPS"
    # Expression references that functions call back are visits too.
    with pytest.raises(ExpressionTooExpensive, match="ORDINAUT_EXPR_MAX_STEPS"):
        expr_evaluate("sort_by(items[*].{n: @}, &n)", data, ExpressionBudget(max_steps=1000))
    assert len(expr_evaluate("items[?@ > `10`]", data)) == 4989  # the default budget takes it


def test_settings_set_the_budgets() -> None:
    with (
        override_settings(ORDINAUT_EXPR_MAX_ITEMS=10),
        pytest.raises(ExpressionTooExpensive, match=r"ORDINAUT_EXPR_MAX_ITEMS \(10\)"),
    ):
        expr_evaluate("items[*]", {"items": list(range(20))})
    with (
        override_settings(ORDINAUT_EXPR_MAX_STEPS=5),
        pytest.raises(ExpressionTooExpensive, match=r"ORDINAUT_EXPR_MAX_STEPS \(5\)"),
    ):
        expr_evaluate("a.b.c.d.e.f", {})


def test_reading_the_context_costs_no_items() -> None:
    big = {"rows": [{"id": i, "tags": ["a", "b"]} for i in range(60_000)]}  # 360k items written out
    assert expr_evaluate("rows", big) is big["rows"]
    assert expr_evaluate("not_null(missing, rows)", big) is big["rows"]
    assert expr_evaluate("length(rows)", big) == 60_000
    with pytest.raises(ExpressionTooExpensive, match="ORDINAUT_EXPR_MAX_ITEMS"):
        expr_evaluate("[rows, rows]", big)  # what it builds is measured with what it holds


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        ("params.city", {"params": {"city": "Paris"}}, "Paris"),
        ("length(steps.calendar.events)", {"steps": {"calendar": {"events": [1, 2, 3]}}}, 3),
        ("items[?n > `1`].n", {"items": [{"n": 1}, {"n": 2}, {"n": 3}]}, [2, 3]),
        ("{a: a, b: [a, a]}", {"a": 1}, {"a": 1, "b": [1, 1]}),
        ("sort_by(items, &n)[*].n", {"items": [{"n": 2}, {"n": 1}]}, [1, 2]),
        ("join(', ', names)", {"names": ["a", "b"]}, "a, b"),
        ("items[*][]", {"items": [[1], [2, 3]]}, [1, 2, 3]),
        ("items[1:]", {"items": [1, 2, 3]}, [2, 3]),
        ("map(&to_string(@), items)", {"items": [1, 2]}, ["1", "2"]),
        ("merge(a, {c: `3`})", {"a": {"b": 2}}, {"b": 2, "c": 3}),
    ],
)
def test_normal_expressions_are_unaffected(expression: str, data: Any, expected: Any) -> None:
    assert expr_evaluate(expression, data) == expected


def test_the_templates_of_one_render_share_one_budget() -> None:
    context = {"items": list(range(300))}
    one = {"x": "${items[*]}"}
    with override_settings(ORDINAUT_EXPR_MAX_ITEMS=500):
        assert render(one, context) == {"x": list(range(300))}
        with pytest.raises(ExpressionTooExpensive):
            render({"x": "${items[*]}", "y": "${items[*]}"}, context)


def test_condition_and_template_checks_refuse_an_expression_that_spends_the_budget() -> None:
    problem = condition_error(DOUBLING)
    assert problem is not None
    assert "expression_too_expensive" in problem
    assert "ORDINAUT_EXPR_MAX_ITEMS" in problem
    assert condition_error("${" + DOUBLING + "}") == problem
    errors = template_errors({"query": {"q": "x ${" + DOUBLING + "} y"}})
    assert list(errors) == ["query.q"]
    assert "expression_too_expensive" in errors["query.q"]
    # Data-dependent expressions and ordinary ones pass the check.
    assert condition_error("steps.a | [@,@]") is None
    assert condition_error("last_run == null || last_run.status == 'succeeded'") is None
    assert template_errors({"q": "${params.city}", "at": "${now+1d}"}) == {}
    with pytest.raises(ExpressionTooExpensive):
        condition_evaluate(DOUBLING, {"task": {}})


# --- The API ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_post_tasks_refuses_a_condition_that_spends_the_budget(agent: Any) -> None:
    body = manual_task_body({"pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {}}]})
    response = agent.client.post("/tasks", {**body, "condition": DOUBLING}, format="json")
    assert response.status_code == 400, response.json()
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert list(error["fields"]) == ["condition"]
    assert "expression_too_expensive" in error["message"]
    assert "ORDINAUT_EXPR_MAX_ITEMS" in error["message"]
    assert not Task.objects.filter(owner=agent.agent).exists()


@pytest.mark.django_db
def test_patch_and_post_refuse_a_step_if_or_template_that_spends_the_budget(agent: Any) -> None:
    created = agent.client.post(
        "/tasks", manual_task_body({"pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {}}]}), format="json"
    )
    assert created.status_code == 201, created.json()
    task_id = created.json()["id"]

    patched = agent.client.patch(f"/tasks/{task_id}", {"condition": DOUBLING}, format="json")
    assert patched.status_code == 400, patched.json()
    assert list(patched.json()["error"]["fields"]) == ["condition"]

    step = {"id": "a", "uses": "orchestrator.echo", "if": DOUBLING, "with": {"v": "${" + DOUBLING + "}"}}
    patched = agent.client.patch(f"/tasks/{task_id}", {"payload": {"pipeline": [step]}}, format="json")
    assert patched.status_code == 400, patched.json()
    fields = patched.json()["error"]["fields"]
    assert set(fields) == {"payload.pipeline.0.if", "payload.pipeline.0.with.v"}
    assert all("expression_too_expensive" in message for messages in fields.values() for message in messages)
    assert Task.objects.get(pk=task_id).condition == ""


@pytest.mark.django_db
def test_pipelines_validate_reports_the_budget_in_bounded_time(agent: Any) -> None:
    payload = {"pipeline": [{"id": "a", "uses": "orchestrator.echo", "if": DOUBLING, "with": {"v": "${@}"}}]}
    response = agent.client.post("/pipelines/validate", {"payload": payload}, format="json")
    assert response.status_code == 200, response.json()
    report = response.json()
    assert report["valid"] is False
    assert {error["field"] for error in report["errors"]} == {"payload.pipeline.0.if"}
    assert all("expression_too_expensive" in error["message"] for error in report["errors"])


def test_the_dry_run_reports_a_data_dependent_blow_up_on_the_step() -> None:
    expensive = "steps.a | [@,@]" + "|[@,@]" * STAGES
    payload = {
        "pipeline": [
            {"id": "a", "uses": "orchestrator.echo", "with": {}},
            {"id": "b", "uses": "orchestrator.echo", "if": expensive, "with": {"v": "${" + expensive + "}"}},
        ]
    }
    report = pipeline_dry_run(payload=payload, step_outputs={"a": {"k": "v"}})
    assert report["valid"] is False
    fields = {error["field"]: error["message"] for error in report["errors"]}
    assert set(fields) == {"payload.pipeline.1.if", "payload.pipeline.1.with"}
    assert all("expression_too_expensive" in message for message in fields.values())


# --- Fire time -------------------------------------------------------------------------------


def _store_condition(task: Task, condition: str) -> None:
    """A condition stored before budgets were checked (the API refuses it now)."""
    Task.objects.filter(pk=task.pk).update(condition=condition)


@pytest.mark.django_db
def test_a_fire_batch_skips_the_expensive_condition_and_fires_the_others(make_task: Any) -> None:
    expensive = make_task("cron", "*/5 * * * *", title="expensive")
    _store_condition(expensive, DOUBLING)
    cheap = make_task("cron", "*/5 * * * *", title="cheap", condition="task.title == 'cheap'")
    plain = make_task("cron", "*/5 * * * *", title="plain")
    at = Task.objects.get(pk=expensive.pk).next_run_at
    assert at is not None

    again = services.task_fire_batch(occurrences=[(t.pk, at) for t in (expensive, cheap, plain)], now=at)

    assert again == []
    runs = {run.task_id: run for run in Run.objects.filter(scheduled_for=at)}
    assert (runs[expensive.pk].status, runs[expensive.pk].skip_reason) == ("skipped", "expr_budget")
    assert services.EXPR_BUDGET_SKIP_REASON == "expr_budget"
    assert len("expr_budget") <= Run._meta.get_field("skip_reason").max_length  # type: ignore[operator]
    assert (runs[cheap.pk].status, runs[cheap.pk].skip_reason) == ("queued", "")
    assert (runs[plain.pk].status, runs[plain.pk].skip_reason) == ("queued", "")


@pytest.mark.django_db
def test_an_event_condition_that_blows_up_on_the_event_is_skipped_by_the_events_fire(make_task: Any) -> None:
    # `event | ...` is null over the checker's empty context, so the API takes it; the event makes it blow up.
    expensive = make_task("event", "email.*", title="expensive", condition="event" + "|[@,@]" * STAGES)
    plain = make_task("event", "email.*", title="plain")
    event = {"id": "8a3c1b7e-0000-4000-8000-000000000001", "topic": "email.received", "payload": {"s": "hi"}}
    published = Task.objects.get(pk=plain.pk).created_at + timedelta(seconds=1)
    with transaction.atomic():
        runs = services.task_fire_event(task_ids=[expensive.pk, plain.pk], event=event, published_at=published)
    by_task = {run.task_id: run for run in runs}
    assert by_task[expensive.pk].skip_reason == "expr_budget"
    assert (by_task[plain.pk].status, by_task[plain.pk].skip_reason) == ("queued", "")


@pytest.fixture
def event_stream(redis_client: redis.Redis) -> Iterator[str]:
    yield from clean_stream(redis_client)


@pytest.mark.django_db
def test_the_events_consumer_keeps_going_past_an_expensive_condition(
    agent: Any, make_task: Any, event_stream: str
) -> None:
    expensive = make_task("event", "email.*", title="expensive", condition="event" + "|[@,@]" * STAGES)
    plain = make_task("event", "email.*", title="plain")
    first = publish(agent.agent, "email.received", {"n": 1})
    second = publish(agent.agent, "email.received", {"n": 2})

    stats = make_consumer().run(iterations=3)

    assert stats.errors == 0
    for event in (first, second):
        runs = {run.task_id: run for run in Run.objects.filter(trigger_key=f"event:{event.pk}")}
        assert runs[expensive.pk].skip_reason == "expr_budget"
        assert (runs[plain.pk].status, runs[plain.pk].skip_reason) == ("queued", "")


# --- The worker ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("where", ["if", "with"])
def test_a_step_whose_if_or_with_spends_the_budget_fails_permanently(agent: Any, where: str) -> None:
    expensive = "steps.a" + "|[@,@]" * STAGES  # null when checked, the step's output when run
    step: dict[str, Any] = {"id": "b", "uses": "orchestrator.echo", "with": {}}
    if where == "if":
        step["if"] = expensive
    else:
        step["with"] = {"v": "${" + expensive + "}"}
    payload = {"pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {"k": "v"}}, step]}

    run = run_in_process(agent.agent, payload)

    assert run.status == "failed"
    assert run.error["code"] == "expression_too_expensive"
    assert run.error["step_id"] == "b"
    record = run.steps.get(step_id="b")
    assert record.status == "failed"
    assert record.attempts == 1  # permanent: no retry
    assert record.error["code"] == "expression_too_expensive"
    assert record.error["retryable"] is False
    assert "ORDINAUT_EXPR_MAX_ITEMS" in record.error["message"]
