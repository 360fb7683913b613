"""The step engine driven in-process (no broker): outputs, conditions, templates, retries, errors."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from pipelines.dryrun import pipeline_dry_run
from runs.engine import Next, RetryIn, RetryPolicy, retry_delay_s
from runs.models import Run, StepRun
from runs.services import run_create
from tests.support.pipelines import drive, make_task
from tests.support.servers import LoopbackServer, Reply, loopback_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def server() -> Any:
    with loopback_server() as srv:
        yield srv


def _steps(run: Run) -> dict[str, StepRun]:
    return {s.step_id: s for s in StepRun.objects.filter(run=run)}


def test_later_steps_see_outputs_by_id_and_by_save_as(agent: Any) -> None:
    task = make_task(
        agent.agent,
        {
            "params": {"n": 5},
            "pipeline": [
                {"id": "first", "uses": "orchestrator.echo", "with": {"n": "${params.n}", "tags": ["a", "b"]}},
                {"id": "second", "uses": "orchestrator.echo", "with": {"x": 1}, "save_as": "alias"},
                {
                    "id": "third",
                    "uses": "orchestrator.echo",
                    "with": {
                        "n": "${steps.first.n}",
                        "by_alias": "${steps.alias.x}",
                        "by_id": "${steps.second.x}",
                        "text": "n=${steps.first.n} tags=${steps.first.tags}",
                    },
                },
            ],
        },
    )
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    assert run.status == "succeeded"
    assert run.result == {"n": 5, "by_alias": 1, "by_id": 1, "text": 'n=5 tags=["a", "b"]'}
    assert _steps(run)["third"].input == run.result


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ({"with": {"seen": "${values(@)[?first].first.x}"}}, {"seen": [1]}),
        ({"with": {"seen": "${*.first.x}"}}, {"seen": [1]}),
        ({"with": {"seen": "${@.steps.first.x}"}}, {"seen": 1}),
        ({"with": {"n": 2}, "if": "length(values(@)[?first]) > `0`"}, {"n": 2}),
    ],
    ids=["values-of-root", "wildcard", "current-node", "condition"],
)
def test_a_real_run_and_the_dry_run_see_the_same_steps(
    agent: Any, step: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Expressions that reach `steps` through `@` or `*` rather than by name."""
    payload = {
        "pipeline": [
            {"id": "first", "uses": "orchestrator.echo", "with": {"x": 1}},
            {"id": "second", "uses": "orchestrator.echo", **step},
        ]
    }
    run = run_create(task=make_task(agent.agent, payload), trigger="manual")

    drive(run.pk)
    report = pipeline_dry_run(payload=payload, step_outputs={"first": {"x": 1}})

    run.refresh_from_db()
    second = _steps(run)["second"]
    dry = report["steps"][1]
    assert (second.status == "succeeded", second.input) == (dry["would_run"], dry["rendered_input"])
    assert (run.status, run.result) == ("succeeded", expected)


def test_now_is_scheduled_for_in_the_task_timezone_and_shifts(agent: Any) -> None:
    task = make_task(
        agent.agent,
        {
            "pipeline": [
                {
                    "uses": "orchestrator.echo",
                    "with": {"start": "${now}", "end": "${now+24h}", "before": "${now-30m}", "week": "${now+7d}"},
                }
            ]
        },
        timezone="Europe/Chisinau",
    )
    # 2026-03-27 06:30 UTC is 08:30 in Chisinau (UTC+2); DST starts there on 2026-03-29.
    run = run_create(task=task, trigger="schedule", scheduled_for=datetime(2026, 3, 27, 6, 30, tzinfo=UTC))

    drive(run.pk)

    run.refresh_from_db()
    assert run.result == {
        "start": "2026-03-27T08:30:00+02:00",
        "end": "2026-03-28T08:30:00+02:00",
        "before": "2026-03-27T08:00:00+02:00",
        "week": "2026-04-03T08:30:00+03:00",
    }


def test_false_condition_skips_the_step_with_null_output_and_the_run_goes_on(agent: Any) -> None:
    task = make_task(
        agent.agent,
        {
            "params": {"send": False, "count": 0},
            "pipeline": [
                {"id": "maybe", "uses": "orchestrator.echo", "with": {"a": 1}, "if": "params.send"},
                {"id": "zero", "uses": "orchestrator.echo", "with": {"b": 2}, "if": "${params.count}"},
                {"id": "after", "uses": "orchestrator.echo", "with": {"maybe": "${steps.maybe}"}},
            ],
        },
    )
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    steps = _steps(run)
    assert (steps["maybe"].status, steps["maybe"].output, steps["maybe"].attempts) == ("skipped", None, 0)
    assert steps["zero"].status == "succeeded", "0 is true in JMESPath"
    assert run.status == "succeeded"
    assert run.result == {"maybe": None}


def test_flaky_http_succeeds_on_the_third_attempt_with_growing_recorded_delays(
    agent: Any, server: LoopbackServer
) -> None:
    server.script("/flaky", Reply(503), Reply(503), Reply(200, {"ok": True}))
    task = make_task(
        agent.agent,
        {
            "pipeline": [
                {
                    "id": "call",
                    "uses": "orchestrator.http",
                    "with": {"url": server.url("/flaky")},
                    "retry": {"max_attempts": 3, "backoff_seconds": 1, "backoff_max_seconds": 60},
                }
            ]
        },
    )
    run = run_create(task=task, trigger="manual")

    outcomes = drive(run.pk)

    assert [type(o).__name__ for o in outcomes] == ["RetryIn", "RetryIn", "Next"]
    first, second = outcomes[0].countdown_s, outcomes[1].countdown_s
    assert 0.8 <= first <= 1.2
    assert 1.6 <= second <= 2.4
    assert second > first
    step = StepRun.objects.get(run=run)
    assert (step.status, step.attempts, (step.output or {})["json"]) == ("succeeded", 3, {"ok": True})
    history = step.attempt_history
    assert [h["outcome"] for h in history] == ["retry", "retry", "succeeded"]
    assert [h["attempt"] for h in history] == [1, 2, 3]
    assert history[0]["error"]["code"] == "http_error"
    assert history[0]["error"]["status"] == 503
    assert history[1]["retry_in_s"] > history[0]["retry_in_s"]
    assert server.count("/flaky") == 3


def test_permanent_error_fails_at_once_without_retry(agent: Any, server: LoopbackServer) -> None:
    server.script("/missing", Reply(404, {"error": "nope"}))
    task = make_task(
        agent.agent,
        {
            "pipeline": [
                {"id": "call", "uses": "orchestrator.http", "with": {"url": server.url("/missing")}},
                {"id": "never", "uses": "orchestrator.echo"},
            ]
        },
        max_retries=5,
    )
    run = run_create(task=task, trigger="manual")

    assert drive(run.pk) == [Next.STOP]

    run.refresh_from_db()
    error = run.error or {}
    assert run.status == "failed"
    assert error["code"] == "http_error"
    assert error["step_id"] == "call"
    step = _steps(run)["call"]
    assert (step.status, step.attempts, [h["outcome"] for h in step.attempt_history]) == ("failed", 1, ["failed"])
    assert _steps(run)["never"].status == "pending"
    assert server.count("/missing") == 1


def test_transient_errors_past_max_attempts_fail_the_run(agent: Any, server: LoopbackServer) -> None:
    server.script("/down", Reply(500))
    task = make_task(
        agent.agent,
        {"pipeline": [{"uses": "orchestrator.http", "with": {"url": server.url("/down")}}]},
        max_retries=1,
        retry_backoff_seconds=0.01,
    )
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    step = StepRun.objects.get(run=run)
    assert (run.status, step.attempts) == ("failed", 2)
    assert [h["outcome"] for h in step.attempt_history] == ["retry", "failed"]


def test_on_error_continue_records_the_failure_and_goes_on(agent: Any) -> None:
    task = make_task(
        agent.agent,
        {
            "pipeline": [
                {"id": "broken", "uses": "nowhere.tool", "on_error": "continue"},
                {"id": "after", "uses": "orchestrator.echo", "with": {"was": "${steps.broken}"}},
            ]
        },
    )
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    steps = _steps(run)
    assert steps["broken"].status == "failed"
    assert (steps["broken"].error or {})["code"] == "unknown_tool"
    assert (run.status, run.result, run.error) == ("succeeded", {"was": None}, None)


@pytest.mark.parametrize(
    ("step", "code"),
    [
        ({"uses": "orchestrator.transform", "with": {"data": 1}}, "input_invalid"),
        ({"uses": "orchestrator.wait", "with": {"seconds": "soon"}}, "input_invalid"),
        ({"uses": "testing.bug"}, "tool_error"),
        ({"uses": "orchestrator.http", "with": {"url": "http://example.com/"}}, "host_not_allowed"),
        ({"uses": "orchestrator.echo", "with": {"x": "${length(params.n)}"}}, "template_error"),
        ({"uses": "weather-mcp.forecast", "with": {"city": 5}}, "input_invalid"),
    ],
)
def test_permanent_failures_are_not_retried(agent: Any, step: dict[str, Any], code: str) -> None:
    task = make_task(agent.agent, {"params": {"n": 5}, "pipeline": [step]}, max_retries=3)
    run = run_create(task=task, trigger="manual")

    drive(run.pk)

    run.refresh_from_db()
    error = run.error or {}
    assert run.status == "failed"
    assert error["code"] == code, error
    assert StepRun.objects.get(run=run).attempts == 1


def test_output_schema_violation_is_a_permanent_failure(agent: Any) -> None:
    from pipelines.tools import PYTHON_TOOLS, tool_register

    @tool_register("testing.liar", description="breaks its promise", output_schema={"type": "object"})
    def liar(payload: Any, call: Any) -> Any:
        return [1, 2]

    try:
        task = make_task(agent.agent, {"pipeline": [{"uses": "testing.liar"}]})
        run = run_create(task=task, trigger="manual")
        drive(run.pk)
    finally:
        PYTHON_TOOLS.unregister("testing.liar")

    run.refresh_from_db()
    assert (run.status, (run.error or {}).get("code")) == ("failed", "output_invalid")


def test_short_wait_is_a_countdown_on_the_same_message(agent: Any) -> None:
    task = make_task(agent.agent, {"pipeline": [{"id": "pause", "uses": "orchestrator.wait", "with": {"seconds": 60}}]})
    run = run_create(task=task, trigger="manual")

    from runs.engine import step_execute

    outcome = step_execute(run_id=str(run.pk), index=0, claim_id="m")

    assert isinstance(outcome, RetryIn)
    assert 59 <= outcome.countdown_s <= 60
    step = StepRun.objects.get(run=run)
    assert step.status == "running"
    assert step.resume_at is not None
    # The same message comes back before its time (an early redelivery): it waits again, and
    # a resumed wait is not a new attempt.
    again = step_execute(run_id=str(run.pk), index=0, claim_id="m")
    assert isinstance(again, RetryIn)
    assert StepRun.objects.get(run=run).attempts == 1


def test_long_wait_is_parked_in_the_database(agent: Any, settings: Any) -> None:
    settings.ORDINAUT_MAX_COUNTDOWN_S = 30
    task = make_task(agent.agent, {"pipeline": [{"uses": "orchestrator.wait", "with": {"seconds": 3600}}]})
    run = run_create(task=task, trigger="manual")

    assert drive(run.pk) == [Next.STOP]

    run.refresh_from_db()
    step = StepRun.objects.get(run=run)
    assert step.status == "running"
    assert step.resume_at is not None
    assert run.status == "running"
    assert run.deadline_at == step.resume_at


def test_retry_delays_grow_exponentially_and_stay_below_the_broker_limit(settings: Any) -> None:
    settings.ORDINAUT_MAX_COUNTDOWN_S = 100
    policy = RetryPolicy(max_attempts=20, backoff_s=2, backoff_max_s=1000)
    delays = [retry_delay_s(policy, attempt) for attempt in range(1, 10)]
    assert all(later > earlier for earlier, later in itertools.pairwise(delays[:6]))
    assert max(delays) <= 100
