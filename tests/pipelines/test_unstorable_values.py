"""Values PostgreSQL cannot store (NUL, NaN, Infinity) fail their step once, permanently, instead of
leaving it running for the sweeper to call the tool again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from pipelines.dryrun import pipeline_dry_run
from pipelines.tools import PYTHON_TOOLS, tool_register
from runs.models import Run, StepRun
from runs.services import run_create, runs_sweep
from tests.support.pipelines import drive, make_task

pytestmark = pytest.mark.django_db

UNSTORABLE_OUTPUTS = ["a\x00b", {"key\x00": 1}, {"n": [float("inf")]}, float("nan"), "lone \ud800"]


@dataclass
class Scripted:
    """What testing.returns will answer, and the inputs it was called with."""

    answers: list[Any] = field(default_factory=list)
    calls: list[Any] = field(default_factory=list)


@pytest.fixture
def returns() -> Iterator[Scripted]:
    """testing.returns: a tool answering whatever the test scripts, one answer per call."""
    scripted = Scripted()

    @tool_register("testing.returns", description="answers what it is told")
    def answer(payload: Any, call: Any) -> Any:
        scripted.calls.append(payload)
        return scripted.answers.pop(0)

    yield scripted
    PYTHON_TOOLS.unregister("testing.returns")


def _failed_step(run: Run) -> StepRun:
    run.refresh_from_db()
    assert run.status == "failed", (run.status, run.error)
    return StepRun.objects.get(run=run, index=0)


@pytest.mark.parametrize(
    "with_",
    [
        {"text": '${`"a\\u0000b"`}'},
        {"text": 'prefix ${`"\\u0000"`} suffix'},
        {"n": "${`1e400`}"},
        {"n": "${to_number('-1e400')}"},
        {"deep": {"list": ["${`[1, 1e400]`}"]}},
    ],
)
def test_a_template_producing_an_unstorable_value_fails_the_step_once(agent: Any, with_: dict[str, Any]) -> None:
    task = make_task(agent.agent, {"pipeline": [{"uses": "orchestrator.echo", "with": with_}]}, max_retries=3)
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    step = _failed_step(run)
    assert (step.status, step.attempts) == ("failed", 1)
    assert (step.error or {})["code"] == "template_error"
    assert "cannot be stored" in (step.error or {})["message"]
    assert step.input == with_, "the step keeps its unrendered input"
    assert (run.error or {})["code"] == "template_error"


@pytest.mark.parametrize("output", UNSTORABLE_OUTPUTS, ids=["nul", "nul-key", "inf", "nan", "surrogate"])
def test_a_tool_returning_an_unstorable_value_is_called_once_and_fails_the_step(
    agent: Any, returns: Scripted, output: Any
) -> None:
    returns.answers.append(output)
    task = make_task(agent.agent, {"pipeline": [{"uses": "testing.returns", "with": {"q": 1}}]}, max_retries=3)
    run = run_create(task=task, trigger="manual")

    drive(run.pk)
    # Nothing is left running for the sweeper to call the tool again.
    assert runs_sweep(now=timezone.now() + timedelta(hours=2))["runs_recovered"] == 0

    step = _failed_step(run)
    assert len(returns.calls) == 1
    assert (step.status, step.attempts, step.output) == ("failed", 1, None)
    assert (step.error or {})["code"] == "output_invalid"
    assert (step.error or {})["retryable"] is False
    assert step.input == {"q": 1}


def test_a_tool_error_message_with_a_nul_is_recorded(agent: Any) -> None:
    @tool_register("testing.nul_error", description="fails with a NUL in its message")
    def fail(payload: Any, call: Any) -> Any:
        raise RuntimeError("bad\x00byte")

    try:
        run = run_create(task=make_task(agent.agent, {"pipeline": [{"uses": "testing.nul_error"}]}), trigger="manual")
        drive(run.pk)
    finally:
        PYTHON_TOOLS.unregister("testing.nul_error")

    step = _failed_step(run)
    assert (step.error or {})["code"] == "tool_error"
    assert (step.error or {})["message"] == "RuntimeError: bad\ufffdbyte"


def test_a_success_the_database_refuses_fails_the_step_instead_of_leaving_it_running(agent: Any) -> None:
    """Whatever else PostgreSQL may refuse: here a CHECK constraint, added inside the test's
    transaction (rolled back with it), makes the database refuse the step's output."""
    with connection.cursor() as cursor:
        cursor.execute(
            "ALTER TABLE runs_steprun ADD CONSTRAINT test_refuses_output "
            "CHECK (output IS NULL OR NOT (output ? 'refused'))"
        )
    payload = {
        "pipeline": [
            {"id": "refused", "uses": "orchestrator.echo", "with": {"refused": True}, "on_error": "continue"},
            {"id": "after", "uses": "orchestrator.echo", "with": {"went_on": True}},
        ]
    }
    run = run_create(task=make_task(agent.agent, payload, max_retries=3), trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    steps = {s.step_id: s for s in StepRun.objects.filter(run=run)}
    refused = steps["refused"]
    assert (refused.status, refused.attempts, refused.output) == ("failed", 1, None)
    assert (refused.error or {})["code"] == "output_invalid"
    assert "could not be stored" in (refused.error or {})["message"]
    assert [h["outcome"] for h in refused.attempt_history] == ["failed"]
    assert (run.status, run.result) == ("succeeded", {"went_on": True}), "on_error: continue still applies"


def test_dry_run_reports_an_unstorable_rendered_input() -> None:
    report = pipeline_dry_run(
        payload={"pipeline": [{"id": "big", "uses": "orchestrator.echo", "with": {"n": "${`1e400`}"}}]}
    )

    assert report["valid"] is False
    assert report["steps"][0]["rendered_input"] is None
    assert "cannot be stored" in report["errors"][0]["message"]
    assert report["errors"][0]["field"] == "payload.pipeline.0.with"
