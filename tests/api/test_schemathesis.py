"""Schemathesis, quick profile (R4): each operation of /openapi.json gets generated valid and invalid
requests with an admin token; no 5xx, every 4xx in the error shape, every response as the schema says.

The long profile (>= 1,000 requests, random seeds) is tests/reliability/test_r4_schemathesis.py
(`make reliability-r4`). This one is derandomized, so CI sends the same cases every time.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rest_framework.test import APIClient

from runs.models import Approval, Run
from tests.support.api_matrix import MATRIX, Endpoint
from tests.support.fuzz import Fuzzer, Tally, format_failures, load_schema, no_rate_limits
from tests.support.pipelines import approval_payload, make_task, run_in_process

pytestmark = pytest.mark.django_db

EXAMPLES_PER_MODE = 20  # valid and invalid each: 40 cases per operation


@pytest.fixture(scope="module")
def api_schema() -> Any:
    return load_schema()


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    tally = Tally()
    yield tally
    summary = tally.summary()
    print(
        f"\nschemathesis quick profile: {summary['cases']} cases, {summary['failures']} failing, {summary['statuses']}"
    )


@pytest.fixture
def fuzzer(api_schema: Any, tally: Tally, make_agent: Any, settings: Any) -> Iterator[Fuzzer]:
    caller = make_agent(name="fuzz-admin", admin=True)
    owner = make_agent(name="fuzz-owner")
    with no_rate_limits(settings):
        yield Fuzzer(schema=api_schema, token=caller.token, owner=owner.agent, tally=tally)


@pytest.mark.parametrize("endpoint", MATRIX, ids=str)
def test_generated_requests_get_answers_the_schema_allows(endpoint: Endpoint, fuzzer: Fuzzer, tally: Tally) -> None:
    failures_before = len(tally.failures)

    fuzzer.run_operation(endpoint.method, endpoint.path, examples=EXAMPLES_PER_MODE, derandomize=True, seed=None)

    found = tally.failures[failures_before:]
    assert tally.cases[str(endpoint)] > 0
    assert not found, format_failures(Tally(failures=found, cases=tally.cases))


# --- What the runs found, kept fixed ----------------------------------------------------------


def _operation(path: str, method: str) -> dict[str, Any]:
    return dict(APIClient().get("/openapi.json").json()["paths"][path][method])


CONFLICTS = [
    ("/tasks/{id}/pause", "post"),
    ("/tasks/{id}/resume", "post"),
    ("/tasks/{id}/cancel", "post"),
    ("/tasks/{id}/snooze", "post"),
    ("/tasks/{id}/run_now", "post"),
    ("/runs/{id}/cancel", "post"),
    ("/runs/{id}/replay", "post"),
    ("/runs/{id}/approve", "post"),
    ("/runs/{id}/reject", "post"),
]


@pytest.mark.parametrize(("path", "method"), CONFLICTS, ids=[f"{m.upper()} {p}" for p, m in CONFLICTS])
def test_state_machine_conflicts_are_documented_409s(path: str, method: str) -> None:
    response = _operation(path, method)["responses"]["409"]
    assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


@pytest.mark.parametrize("body", ["false", "0", "[]", '""', "null", "[{}]"])
@pytest.mark.parametrize("action", ["approve", "reject", "replay"])
def test_a_run_action_body_that_is_not_an_object_is_400(body: str, action: str, make_agent: Any) -> None:
    """`false` used to read as an empty body: POST /runs/{id}/approve with it approved everything."""
    caller = make_agent()
    run = run_in_process(caller.agent, approval_payload())

    response = caller.client.post(f"/runs/{run.pk}/{action}", body, content_type="application/json")

    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "validation_error"
    assert Run.objects.get(pk=run.pk).status == Run.Status.WAITING_APPROVAL
    assert Approval.objects.get(run=run).status == Approval.Status.PENDING


@pytest.mark.parametrize("body", ["false", "[]", "null", "7"])
def test_a_run_now_body_that_is_not_an_object_is_400(body: str, make_agent: Any) -> None:
    caller = make_agent()
    task = make_task(caller.agent, {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}]})
    response = caller.client.post(f"/tasks/{task.pk}/run_now", body, content_type="application/json")
    assert response.status_code == 400, response.json()
    assert not Run.objects.filter(task=task).exists()


def test_an_empty_body_still_means_defaults(make_agent: Any) -> None:
    caller = make_agent()
    run = run_in_process(caller.agent, approval_payload())
    assert caller.client.post(f"/runs/{run.pk}/approve").status_code == 200


def test_empty_optional_query_values_are_documented_and_read_as_absent(agent: Any) -> None:
    parameters = {p["name"]: p for p in _operation("/tasks", "get")["parameters"]}
    assert parameters["status"]["allowEmptyValue"] is True
    assert parameters["search"]["allowEmptyValue"] is True
    assert "allowEmptyValue" not in parameters["limit"]
    assert agent.client.get("/tasks?status=&schedule_kind=&search=").status_code == 200
    assert agent.client.get("/tasks?limit=").status_code == 400


@pytest.mark.parametrize(
    ("value", "accepted"),
    [("failed", True), ("failed,canceled", True), (" failed , canceled ,", True), ("failed canceled", False)],
)
def test_run_status_filter_pattern_matches_what_the_api_accepts(value: str, accepted: bool, agent: Any) -> None:
    status = {p["name"]: p for p in _operation("/runs", "get")["parameters"]}["status"]["schema"]
    pattern = next(s["pattern"] for s in status["oneOf"] if "pattern" in s)
    assert bool(re.match(pattern, value)) is accepted
    assert agent.client.get("/runs", {"status": value}).status_code == (200 if accepted else 400)


def _undocumented_methods() -> list[tuple[str, str]]:
    documented: dict[str, set[str]] = {}
    for endpoint in MATRIX:
        documented.setdefault(endpoint.path, set()).add(endpoint.method)
    return [
        (method, path)
        for path, methods in sorted(documented.items())
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if method not in methods
    ]


@pytest.mark.parametrize(
    ("method", "path"), _undocumented_methods(), ids=[f"{m} {p}" for m, p in _undocumented_methods()]
)
def test_undocumented_methods_are_405_with_allow(method: str, path: str, make_agent: Any) -> None:
    """What schemathesis's unsupported_method check does in its coverage phase, which the fuzzing here skips."""
    admin = make_agent(admin=True)
    url = path.replace("{id}", str(uuid.uuid4())).replace("{prefix}", "abcdefgh").replace("{name}", "nobody")

    response = admin.client.generic(method, url, "{}", content_type="application/json")

    assert response.status_code == 405, response.content[:300]
    assert response.json()["error"]["code"] == "method_not_allowed"
    documented = {e.method for e in MATRIX if e.path == path}
    assert documented <= {m.strip() for m in response["Allow"].split(",")}
