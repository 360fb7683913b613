"""Schemathesis over /openapi.json in process (WSGI), for the quick profile (tests/api) and R4 (tests/reliability).

Every generated case is sent with an admin token and checked: schemathesis's own checks (no 5xx,
status code, content type, headers and body as the schema says, invalid input refused, method
not allowed answered 405) plus Ordinaut's error shape. Failures are collected, not raised at the
first one, so a run reports everything it found with a curl line to reproduce each.

Generated `{id}`s are replaced, for most cases, by the ids of real objects (a task, a paused task,
a failed run, a run waiting for approval, its approval, a victim agent), so operations get past
the 404 and reach their validation and state machines. The caller's own agent is never a target:
DELETE /agents/{id} and DELETE /agents/{id}/tokens/{prefix} hit a victim agent, never the token
the run authenticates with.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import AcceptedNegativeData, ServerError
from schemathesis.core.mutations import OperatorKind
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ordinaut_site.api import error_code_for
from ordinaut_site.models import Agent
from tests.support.api_matrix import World, build_world
from tests.support.pipelines import approval_payload, echo_pipeline

# Which world objects a generated {id} may be swapped for, by the path's first segment.
ID_POOLS = {
    "tasks": ["task", "paused_task"],
    "runs": ["failed_run", "waiting_run"],
    "approvals": ["approval"],
    "agents": ["agent"],
    "events": ["event"],
}
# Which world objects a generated {name} may be swapped for, by the path's first segment.
NAME_POOLS = {"tools": ["tool"], "tool-servers": ["tool_server"]}
REQUEST_ID_HEADER = "X-Request-ID"
# Valid domain values a JSON Schema cannot describe (cron grammar, IANA names, pipelines). Most
# valid-mode bodies get some of them, so creation and preview get past validation too.
SCHEDULES = [
    ("cron", "0 9 * * 1-5"),
    ("cron", "*/15 * * * *"),
    ("rrule", "FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=8"),
    ("interval", "PT15M"),
    ("once", "2099-01-01T09:00:00+02:00"),
    ("event", "email.*"),
    ("manual", ""),
]
# Past the edges where the audit found 500s: RRULE parts out of RFC 5545's ranges (dateutil crashed
# on them) and a NUL in a {name} (it reached a query). Valid-mode cases get them now and then: a 400.
EDGE_SCHEDULES = [
    ("rrule", "FREQ=MONTHLY;BYDAY=+60FR"),
    ("rrule", "FREQ=HOURLY;BYHOUR=25"),
    ("rrule", "FREQ=DAILY;INTERVAL=0"),
]
EDGE_NAMES = ["a\x00b"]
TIMEZONES = ["UTC", "Europe/Chisinau", "America/New_York", "Asia/Kolkata"]
CONDITIONS = [None, "task.title", "`true`"]
PAYLOADS = [
    echo_pipeline(1),
    approval_payload(),
    {"params": {"x": 1}, "pipeline": [{"id": "a", "uses": "orchestrator.echo", "with": {"v": "${params.x}"}}]},
]
TASK_FIELD_HINTS: dict[str, list[Any]] = {"timezone": TIMEZONES, "condition": CONDITIONS, "payload": PAYLOADS}
# Not run: positive_data_acceptance expects any schema-valid body to be accepted, but a schema
# cannot say that "0 9 * * *" is a cron expression and "every tuesday" is not, that a pipeline's
# templates must resolve, or that a paused task cannot be paused again. Those 400s and 409s are
# the API working; their counts are still reported (positive_rejected).
EXCLUDED_CHECKS = [positive_data_acceptance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# DRF reads JSON scalars the lenient way, and the API keeps it: 5 for a string field is "5", "5" or
# 5.0 for an integer field is 5, "true" or 1 for a boolean is true. A negative case whose only
# mutation is such a type swap, answered 2xx, is that leniency (counted as coerced), not a failure.
# (schema type, type sent instead)
DRF_COERCIONS = {
    ("string", "number"),
    ("string", "integer"),
    ("integer", "string"),
    ("integer", "number"),
    ("number", "string"),
    ("boolean", "string"),
    ("boolean", "integer"),
    ("boolean", "number"),
}


def _types(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def _mutations(case: Any) -> tuple[Any, ...]:
    data = getattr(getattr(case.meta, "phase", None), "data", None)
    return tuple(getattr(data, "mutations", None) or ())


def _mutates_authorization(case: Any) -> bool:
    return any((mutation.parameter or "").lower() == "authorization" for mutation in _mutations(case))


def _drf_coerces(mutation: Any) -> bool:
    """A swap of one scalar type for one DRF coerces."""
    return (
        mutation.operator == OperatorKind.CHANGE_TYPE
        and mutation.keywords == ("type",)
        and all(
            (original, sent) in DRF_COERCIONS or original == "null"
            for original in _types(mutation.original_value)
            for sent in _types(mutation.new_value)
        )
        and any(original != "null" for original in _types(mutation.original_value))
    )


def _drf_trims(mutation: Any) -> bool:
    """A string made one too long whose extra length is surrounding whitespace: DRF's CharField
    trims it (trim_whitespace) before checking max_length, so what it stores is within the limit.
    (Hypothesis draws from constants found in the loaded code, so which cases hit this changes with
    the code; seen with a contact starting with a control character Python counts as whitespace.)"""
    value = mutation.new_value
    return mutation.keywords == ("maxLength",) and isinstance(value, str) and value.strip() != value


def drf_coercion_only(case: Any) -> bool:
    """Whether every mutation of this negative case is leniency DRF has by design: a scalar type it
    coerces, or a string too long only by whitespace it trims."""
    mutations = _mutations(case)
    if not mutations:
        return False
    return all(_drf_coerces(mutation) or _drf_trims(mutation) for mutation in mutations)


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Ordinaut's own check: X-Request-ID on every answer; every error in the one shape of docs/api.md."""
    request_id = response.headers.get(REQUEST_ID_HEADER.lower()) or response.headers.get(REQUEST_ID_HEADER)
    if isinstance(request_id, list):
        request_id = request_id[0] if request_id else None
    assert request_id, "no X-Request-ID header"
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except Exception:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.text[:200]!r}") from None
    assert isinstance(body, dict), f"error body is not an object: {body!r}"
    assert set(body) == {"error", "request_id"}, f"error body keys {sorted(body)}"
    error = body["error"]
    assert isinstance(error, dict), f"error is not an object: {error!r}"
    assert set(error) <= {"code", "message", "fields"}, f"error keys {sorted(error)}"
    assert isinstance(error.get("message"), str), "error.message is not a string"
    assert error.get("message"), "error.message is empty"
    expected = error_code_for(response.status_code)
    assert error.get("code") == expected, f"{response.status_code} with code {error.get('code')!r}, not {expected!r}"
    assert body["request_id"] == request_id, "request_id differs from the X-Request-ID header"
    return None


@dataclass
class Tally:
    """What a run did, per operation: cases sent, statuses seen, failures found."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    positive_rejected: Counter[str] = field(default_factory=Counter)
    coerced: Counter[str] = field(default_factory=Counter)
    upstream_unreachable: Counter[str] = field(default_factory=Counter)
    no_negative_cases: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def summary(self) -> dict[str, Any]:
        statuses: Counter[int] = Counter()
        for counter in self.statuses.values():
            statuses.update(counter)
        return {
            "cases": self.total,
            "operations": len(self.cases),
            "failures": len(self.failures),
            "statuses": {str(code): count for code, count in sorted(statuses.items())},
            "positive_cases_rejected_400_409": sum(self.positive_rejected.values()),
            "negative_cases_coerced_by_drf": sum(self.coerced.values()),
            "refreshes_of_unreachable_fuzzed_servers": sum(self.upstream_unreachable.values()),
            "operations_without_invalid_input": self.no_negative_cases,
            "seconds": round(self.seconds, 1),
            "per_operation": {
                label: {"cases": self.cases[label], "statuses": dict(sorted(self.statuses[label].items()))}
                for label in sorted(self.cases)
            },
            "failure_details": self.failures,
        }


class InTestWSGIApp:
    """Django's WSGI application, minus what would break the test's transaction.

    The real handler closes "old" database connections when a request starts and finishes; inside
    the test's transaction that closes the connection and poisons the transaction. Django's test
    client detaches the same signal receivers around each request; this does it for a WSGI caller.
    """

    def __init__(self) -> None:
        self.app = get_wsgi_application()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        signals.request_started.disconnect(close_old_connections)
        signals.request_finished.disconnect(close_old_connections)
        try:
            response = self.app(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                response.close()  # fires request_finished while the receivers are detached
        finally:
            signals.request_started.connect(close_old_connections)
            signals.request_finished.connect(close_old_connections)


def load_schema() -> Any:
    """The schema as the app serves it at /openapi.json, bound to the app for in-process calls."""
    # Credentials are not generated: every case carries the admin token, so generated cases go past
    # authentication and exercise the operation. Missing and bad tokens are the authorization
    # matrix's job (tests/api/test_authorization_matrix.py); schemathesis's ignored_auth check still
    # re-sends cases without the token and expects a 401.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    return schemathesis.openapi.from_wsgi("/openapi.json", InTestWSGIApp(), config=config)


def _digest(value: Any) -> int:
    return int(hashlib.sha256(repr(value).encode()).hexdigest()[:8], 16)


def _pick(value: Any, pool_size: int) -> int | None:
    """A stable choice from the generated value: an index into the pool, or None to keep it."""
    index = _digest(value) % (pool_size + 1)
    return index if index < pool_size else None


def _choose(value: Any, choices: list[Any]) -> Any:
    return choices[_digest(value) % len(choices)]


def _looks_like_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


class Fuzzer:
    """Runs one operation's generated cases against a fresh world of objects owned by `owner`."""

    def __init__(self, *, schema: Any, token: str, owner: Agent, tally: Tally) -> None:
        self.schema = schema
        self.headers = {"Authorization": f"Bearer {token}"}
        self.owner = owner
        self.tally = tally
        self.world: World | None = None

    def _world(self) -> World:
        if self.world is None:
            self.world = build_world(self.owner)
        return self.world

    def _aim(self, case: Any, path: str) -> None:
        """Swap generated path ids for real objects (most of the time; see the module docstring)."""
        params = case.path_parameters or {}
        names = NAME_POOLS.get(path.strip("/").split("/")[0], [])
        if "name" in params and names:
            picked = _pick(params["name"], len(names) + len(EDGE_NAMES))
            if picked is not None and picked >= len(names):
                params["name"] = EDGE_NAMES[picked - len(names)]
            elif picked is not None:
                params["name"] = self._world().names[names[picked]]
            return
        pool = ID_POOLS.get(path.strip("/").split("/")[0], [])
        if "id" not in params or not pool or not _looks_like_uuid(params["id"]):
            return
        index = _pick(params["id"], len(pool))
        if index is None:
            return
        world = self._world()
        params["id"] = world.ids[pool[index]]
        if "prefix" in params:
            params["prefix"] = world.victim_prefix

    def _hint(self, case: Any, label: str) -> None:
        """Valid mode only: swap some generated values for valid domain values (see SCHEDULES)."""
        body = case.body
        if not isinstance(body, dict) or _pick(body, 3) is None:
            return
        body = dict(body)
        if label in ("POST /tasks", "PATCH /tasks/{id}", "POST /schedules/preview"):
            if label != "PATCH /tasks/{id}" or "schedule_kind" in body or "schedule_expr" in body:
                body["schedule_kind"], body["schedule_expr"] = _choose((body, "s"), SCHEDULES + EDGE_SCHEDULES)
            for name, choices in TASK_FIELD_HINTS.items():
                if name in body or (name == "payload" and label == "POST /tasks"):
                    body[name] = _choose((body, name), choices)
        elif label == "POST /pipelines/validate":
            body["payload"] = _choose((body, "p"), PAYLOADS)
        elif label == "POST /tasks/{id}/snooze":
            body.pop("until", None)
            body["delay_seconds"] = body.get("delay_seconds", 60)
        elif label == "POST /runs/{id}/approve":
            body.pop("items", None)
        case.body = body

    def run_operation(self, method: str, path: str, *, examples: int, derandomize: bool, seed: int | None) -> None:
        operation = self.schema[path][method]
        label = f"{method} {path}"
        self.tally.statuses.setdefault(label, Counter())
        for mode in MODES:
            self._run_mode(operation, label, path, mode, examples=examples, derandomize=derandomize, seed=seed)

    def _run_mode(
        self, operation: Any, label: str, path: str, mode: Any, *, examples: int, derandomize: bool, seed: int | None
    ) -> None:
        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
            print_blob=False,
        )
        @hypothesis.given(data=st.data())
        def drive(data: Any) -> None:
            case = data.draw(operation.as_strategy(generation_mode=mode))
            self._one(case, label, path, mode)

        if seed is not None and not derandomize:
            drive = hypothesis.seed(seed)(drive)
        started = time.monotonic()
        try:
            drive()
        except hypothesis.errors.Unsatisfiable:
            # Nothing in the operation can be made invalid (GET /agents/me takes no input at all).
            if mode != GenerationMode.NEGATIVE:
                raise
            self.tally.no_negative_cases.append(label)
        finally:
            self.tally.seconds += time.monotonic() - started

    def _one(self, case: Any, label: str, path: str, mode: Any) -> None:
        self._aim(case, path)
        if mode == GenerationMode.POSITIVE:
            self._hint(case, label)
        case.headers = {**(case.headers or {}), REQUEST_ID_HEADER: f"fuzz-{uuid.uuid4().hex[:12]}"}
        self.tally.cases[label] += 1
        # A negative case may be about the credentials themselves (Authorization missing or malformed):
        # then it goes as generated, and must get a 401.
        headers = None if _mutates_authorization(case) else self.headers
        try:
            response = case.call(headers=headers)
        except Exception as exc:  # the app raised instead of answering: always a failure
            self._fail(case, label, mode, None, _describe([exc]))
            return
        self.tally.statuses[label][response.status_code] += 1
        if mode == GenerationMode.POSITIVE and response.status_code in (400, 409):
            self.tally.positive_rejected[label] += 1

        if 200 <= response.status_code < 300 and case.method.upper() != "GET":
            self.world = None  # a write went through: the next case gets fresh objects
        try:
            case.validate_response(
                response, excluded_checks=EXCLUDED_CHECKS, additional_checks=[error_shape], headers=headers
            )
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
            failures = list(getattr(exc, "exceptions", None) or [exc])
            if drf_coercion_only(case):
                kept = [failure for failure in failures if not isinstance(failure, AcceptedNegativeData)]
                if len(kept) < len(failures):
                    self.tally.coerced[label] += 1
                failures = kept
            if _upstream_unreachable(label, response):
                kept = [failure for failure in failures if not isinstance(failure, ServerError)]
                if len(kept) < len(failures):
                    self.tally.upstream_unreachable[label] += 1
                failures = kept
            if failures:
                self._fail(case, label, mode, response.status_code, _describe(failures), body=response.text[:500])

    def _fail(self, case: Any, label: str, mode: Any, status: int | None, message: str, body: str = "") -> None:
        try:
            curl = case.as_curl_command(headers={"Authorization": "Bearer $TOKEN"})
        except Exception:
            curl = ""
        self.tally.failures.append(
            {
                "operation": label,
                "mode": str(getattr(mode, "value", mode)),
                "status": status,
                "message": message[:2000],
                "response": body,
                "curl": curl[:2000],
            }
        )


def _upstream_unreachable(label: str, response: Any) -> bool:
    """A refresh of a tool server the fuzzer registered itself, at a made-up host: the 502
    `tool_server_unreachable` is the documented answer about a server outside Ordinaut, not a fault
    of Ordinaut's (the seeded server, on loopback, answers)."""
    if label != "POST /tool-servers/{name}/refresh" or response.status_code != 502:
        return False
    try:
        return bool(response.json()["error"]["code"] == "tool_server_unreachable")
    except (ValueError, KeyError, TypeError):
        return False


def _describe(failures: list[BaseException]) -> str:
    return "\n".join(f"{getattr(f, 'title', type(f).__name__)}: {getattr(f, 'message', f)}" for f in failures)


@contextmanager
def no_rate_limits(settings: Any) -> Iterator[None]:
    """Thousands of requests from one agent: the rate limits would answer most of them 429."""
    settings.ORDINAUT_RATE_LIMIT = "off"
    settings.ORDINAUT_WRITE_RATE_LIMIT = "off"
    settings.ORDINAUT_ANON_RATE_LIMIT = "off"
    yield


def format_failures(tally: Tally, limit: int = 20) -> str:
    lines = [f"{len(tally.failures)} failing case(s) out of {tally.total}:"]
    for failure in tally.failures[:limit]:
        lines.append(f"- {failure['operation']} [{failure['mode']}] -> {failure['status']}: {failure['message']}")
        if failure["response"]:
            lines.append(f"    response: {failure['response'][:300]}")
        if failure["curl"]:
            lines.append(f"    {failure['curl'][:500]}")
    return "\n".join(lines)
