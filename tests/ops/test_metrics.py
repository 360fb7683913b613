"""Ordinaut's own metrics, scraped over HTTP from a real web, worker, beat and events consumer after
runs that succeeded and failed, a schedule fire, an event, an approval, a spent budget and a spent
rate limit (the stack and scenario: tests/ops/conftest.py)."""

from __future__ import annotations

import time

import pytest

from tests.ops.conftest import Stack, total

# The scenario commits its rows (tests/ops/conftest.py); the tests only read and scrape.
pytestmark = [pytest.mark.django_db, pytest.mark.e2e]


def test_the_web_reports_the_state_of_queues_workers_beat_events_and_approvals(stack: Stack) -> None:
    web = stack.scrape("web")

    assert {labels["source"]: value for labels, value in web["ordinaut_metrics_source_up"]} == {
        "celery": 1.0,
        "approvals": 1.0,
        "beat": 1.0,
        "events": 1.0,
    }
    assert {labels["queue"] for labels, _ in web["ordinaut_queue_depth"]} == {stack.queue, f"{stack.queue}.schedule"}
    assert total(web, "ordinaut_queue_depth") == 0, "the worker drained its queues"
    assert total(web, "ordinaut_workers_alive") == 1
    assert total(web, "ordinaut_beat_lock_held") == 1
    assert 0 <= total(web, "ordinaut_beat_heartbeat_age_seconds") < 30
    assert total(web, "ordinaut_beat_due_backlog") == 0
    assert total(web, "ordinaut_events_consumers_alive") == 1
    assert total(web, "ordinaut_events_consumer_lag_entries") == 0
    assert total(web, "ordinaut_events_consumer_lag_seconds") == 0
    assert total(web, "ordinaut_events_pending_entries") == 0
    # Decided by now; pending while the run waited.
    assert total(web, "ordinaut_approvals_pending") == 0
    assert total(stack.while_waiting, "ordinaut_approvals_pending") == 1
    assert 0 <= total(stack.while_waiting, "ordinaut_approvals_oldest_pending_age_seconds") < 60
    # Counted in the web process: the API's event, the anonymous requests past 3/min.
    assert total(web, "ordinaut_events_published_total", origin="agent") == 1
    # 2 of the 5 anonymous requests; more when another suite's web on this Redis counted in the same window.
    assert 2 <= total(web, "ordinaut_rate_limit_rejections_total", kind="anonymous") <= 5
    assert total(web, "ordinaut_rate_limit_rejections_total", kind="requests") == 0
    # django-prometheus's own series are still there.
    assert total(web, "django_http_requests_total_by_method_total", method="POST") >= 6


def test_the_worker_reports_runs_steps_tool_calls_fire_lateness_and_budgets(stack: Stack) -> None:
    worker = stack.scrape("worker")

    finished = "ordinaut_runs_finished_total"
    assert total(worker, finished, trigger="manual", status="succeeded") == 2  # echo, and the approved one
    assert total(worker, finished, trigger="manual", status="failed") == 3  # bug, refused host, budget
    assert total(worker, finished, trigger="schedule", status="succeeded") == 1
    assert total(worker, finished, trigger="event", status="succeeded") == 1
    assert total(worker, "ordinaut_run_duration_seconds_count") == 7
    assert 0 < total(worker, "ordinaut_run_duration_seconds_sum") < 7 * 60

    calls = "ordinaut_tool_calls_total"
    assert total(worker, calls, server="orchestrator", tool="echo", outcome="ok") == 7
    assert total(worker, calls, server="orchestrator", tool="http", outcome="failed") == 1
    assert total(worker, calls, server="testing", tool="bug", outcome="error") == 1
    assert total(worker, calls, server="orchestrator", tool="request_approval", outcome="suspended") == 1
    assert total(worker, calls, server="weather-mcp", tool="forecast", outcome="ok") == 1
    assert total(worker, "ordinaut_budget_rejections_total", kind="tool_calls") == 1

    # One job per step: the decision, not the step, closes the approval step.
    steps = "ordinaut_step_duration_seconds_count"
    assert total(worker, steps, server="orchestrator") == 9
    assert total(worker, steps, server="testing") == 1
    assert total(worker, steps, server="weather-mcp") == 2  # one call, one refused by the budget
    assert 0 < total(worker, "ordinaut_step_duration_seconds_sum") < 60

    assert total(worker, "ordinaut_schedule_fire_lateness_seconds_count") == 1
    assert 0 <= total(worker, "ordinaut_schedule_fire_lateness_seconds_sum") < 10
    assert total(worker, "ordinaut_schedule_fire_lateness_seconds_bucket", le="+Inf") == 1


def test_beat_reports_its_leadership_ticks_and_send_lateness(stack: Stack) -> None:
    beat = stack.scrape("beat")

    assert total(beat, "ordinaut_beat_leader") == 1
    assert time.time() - total(beat, "ordinaut_beat_last_tick_timestamp_seconds") < 10
    assert total(beat, "ordinaut_beat_schedules") >= 1  # the once task, and beat's own entries
    assert total(beat, "ordinaut_beat_send_lateness_seconds_count") == 1
    assert 0 <= total(beat, "ordinaut_beat_send_lateness_seconds_sum") < 10


def test_the_events_consumer_reports_what_it_consumed_and_how_late(stack: Stack) -> None:
    events = stack.scrape("events")

    assert total(events, "ordinaut_events_consumed_total", outcome="delivered") == 1
    assert total(events, "ordinaut_events_consumed_total", outcome="bad") == 0
    assert total(events, "ordinaut_events_delivery_lag_seconds_count") == 1
    assert 0 <= total(events, "ordinaut_events_delivery_lag_seconds_sum") < 10


def test_each_started_run_is_counted_once_with_its_first_step_lateness(stack: Stack) -> None:
    worker = stack.scrape("worker")

    assert total(worker, "ordinaut_runs_started_total") == 7
    assert total(worker, "ordinaut_runs_started_total", trigger="schedule") == 1
    assert total(worker, "ordinaut_schedule_first_step_lateness_seconds_count", trigger="schedule") == 1
    assert total(worker, "ordinaut_schedule_first_step_lateness_seconds_count", trigger="event") == 1
