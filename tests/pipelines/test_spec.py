"""Structural validation of a payload: clear errors naming the step, limits on size and nesting."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.errors import ValidationFailed
from pipelines.spec import MAX_DEPTH, json_depth, payload_errors, payload_validate


def _step(**fields: Any) -> dict[str, Any]:
    return {"uses": "orchestrator.echo", **fields}


def test_a_valid_payload_is_normalised() -> None:
    assert payload_validate({"pipeline": [_step()]}) == {"params": {}, "pipeline": [_step()]}


@pytest.mark.parametrize(
    ("pipeline", "field", "words"),
    [
        ([{"id": "a"}], "payload.pipeline.0.uses", "step 'a': is required"),
        ([_step(id="a"), _step(id="a")], "payload.pipeline.1.id", "duplicate step id 'a'"),
        ([_step(), _step(id="step_1")], "payload.pipeline.1.id", "duplicate step id 'step_1'"),
        ([_step(id="a", save_as="b"), _step(id="b")], "payload.pipeline.0.save_as", "collides with the id"),
        ([_step(id="a", bogus=1)], "payload.pipeline.0.bogus", "step 'a': unknown step key"),
        ([_step(id="w", uses="../etc/passwd")], "payload.pipeline.0.uses", "not a tool name"),
        ([_step(id="w", uses="noserver")], "payload.pipeline.0.uses", "not a tool name"),
        ([_step(id="c", **{"if": "steps.["})], "payload.pipeline.0.if", "step 'c': invalid JMESPath"),
        ([_step(id="c", **{"if": 5})], "payload.pipeline.0.if", "must be a JMESPath expression string"),
        ([_step(id="t", with_={})], "payload.pipeline.0.with_", "unknown step key"),
        ([_step(id="t", **{"with": {"x": "${params.n"}})], "payload.pipeline.0.with.x", "step 't': unterminated"),
        (
            [_step(id="t", **{"with": {"x": ["${bogus_fn(params)}"]}})],
            "payload.pipeline.0.with.x.0",
            "unknown JMESPath function bogus_fn",
        ),
        ([_step(id="r", retry={"max_attempts": 0})], "payload.pipeline.0.retry.max_attempts", "step 'r':"),
        ([_step(id="r", retry={"tries": 2})], "payload.pipeline.0.retry.tries", "unknown retry key"),
        ([_step(id="r", retry=[1])], "payload.pipeline.0.retry", "must be an object"),
        ([_step(id="o", on_error="ignore")], "payload.pipeline.0.on_error", "'fail' or 'continue'"),
        ([_step(id="o", timeout_seconds=0)], "payload.pipeline.0.timeout_seconds", "must be a number"),
        ([_step(id="o", timeout_seconds=True)], "payload.pipeline.0.timeout_seconds", "must be a number"),
        ([_step(id="d", description=["x"])], "payload.pipeline.0.description", "must be a string"),
        (["not a step"], "payload.pipeline.0", "must be an object"),
    ],
)
def test_structural_errors_name_the_field_and_the_step(pipeline: list[Any], field: str, words: str) -> None:
    errors = payload_errors({"pipeline": pipeline})
    assert field in errors, errors
    assert any(words in message for message in errors[field]), errors[field]


def test_limits_on_steps_size_and_nesting(settings: Any) -> None:
    settings.ORDINAUT_MAX_STEPS = 3
    assert "has 4 steps" in payload_errors({"pipeline": [_step()] * 4})["payload.pipeline"][0]
    settings.ORDINAUT_MAX_PAYLOAD_BYTES = 200
    assert "bytes" in payload_errors({"pipeline": [_step(**{"with": {"x": "y" * 300}})]})["payload"][0]
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    assert "nests deeper" in payload_errors({"pipeline": [_step(**{"with": deep})]})["payload"][0]


def test_nesting_is_measured_without_recursion() -> None:
    deep: Any = 1
    for _ in range(100_000):
        deep = {"a": deep}
    assert json_depth(deep) == MAX_DEPTH + 1


def test_payload_validate_raises_with_every_field() -> None:
    with pytest.raises(ValidationFailed) as caught:
        payload_validate({"pipeline": [{"id": "a"}, {"id": "a", "uses": "x.y", "nope": 1}]})
    assert set(caught.value.fields) == {"payload.pipeline.0.uses", "payload.pipeline.1.id", "payload.pipeline.1.nope"}


def test_both_seed_payloads_are_valid() -> None:
    from tests.pipelines.seed import EMAIL_FOLLOWUP, MORNING_BRIEFING

    assert payload_errors(MORNING_BRIEFING["payload"]) == {}
    assert payload_errors(EMAIL_FOLLOWUP["payload"]) == {}


@pytest.mark.parametrize(
    ("step", "field", "words"),
    [
        (_step(id="f", foreach="steps.find.emails"), "payload.pipeline.0.foreach", "one ${...} expression"),
        (_step(id="f", foreach="${a} and ${b}"), "payload.pipeline.0.foreach", "one ${...} expression"),
        (_step(id="f", foreach={"a": 1}), "payload.pipeline.0.foreach", "one ${...} expression"),
        (_step(id="f", foreach="${steps.[}"), "payload.pipeline.0.foreach", "step 'f':"),
        (_step(id="f", foreach=list(range(6))), "payload.pipeline.0.foreach", "ORDINAUT_MAX_FOREACH_ITEMS is 5"),
        (_step(id="f", max_parallel=2), "payload.pipeline.0.max_parallel", "only to a step with a foreach"),
        (_step(id="f", foreach=[1], max_parallel=0), "payload.pipeline.0.max_parallel", "1..3"),
        (_step(id="f", foreach=[1], max_parallel=4), "payload.pipeline.0.max_parallel", "ORDINAUT_MAX_PARALLEL"),
        (_step(id="f", foreach=[1], max_parallel=True), "payload.pipeline.0.max_parallel", "integer"),
        (
            {"id": "f", "uses": "orchestrator.request_approval", "foreach": [1], "with": {"message": "ok?"}},
            "payload.pipeline.0.foreach",
            "suspends its step",
        ),
    ],
)
def test_foreach_and_max_parallel_are_checked(step: dict[str, Any], field: str, words: str, settings: Any) -> None:
    settings.ORDINAUT_MAX_FOREACH_ITEMS = 5
    settings.ORDINAUT_MAX_PARALLEL = 3

    errors = payload_errors({"pipeline": [step]})

    assert field in errors, errors
    assert any(words in message for message in errors[field]), errors[field]


def test_a_foreach_step_is_valid_with_an_expression_or_a_list() -> None:
    pipeline = [
        _step(id="find", **{"with": {"emails": ["a", "b"]}}),
        _step(id="each", foreach="${steps.find.emails}", max_parallel=8, **{"with": {"to": "${item}"}}),
        _step(id="lit", foreach=["${params.x}", 2]),
    ]
    assert payload_errors({"pipeline": pipeline}) == {}
