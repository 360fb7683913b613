"""Structural validation of a task payload: {"params": {...}, "pipeline": [step, ...]}."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from ordinaut_site.errors import ValidationFailed

from .templates import EXPR_MAX_LEN, Expr, TemplateSyntaxError, condition_error, template_errors, template_parse

STEP_KEYS = frozenset(
    {
        "id",
        "uses",
        "with",
        "save_as",
        "if",
        "foreach",
        "max_parallel",
        "timeout_seconds",
        "retry",
        "on_error",
        "on_reject",
        "description",
    }
)
RETRY_KEYS = frozenset({"max_attempts", "backoff_seconds", "backoff_max_seconds"})
PAYLOAD_KEYS = frozenset({"params", "pipeline"})
ON_ERROR = ("fail", "continue")
APPROVAL_TOOL = "orchestrator.request_approval"
# What a run does after its approval step is rejected or expires (the step's `on_reject`).
ON_REJECT = ("stop", "continue")
# Tools that suspend their step (an approval, a wait) cannot run once per item of a `foreach`.
SUSPENDING_TOOLS = frozenset({APPROVAL_TOOL, "orchestrator.wait"})
# How many items of a `foreach` step run at once when the step does not say (`max_parallel`).
DEFAULT_MAX_PARALLEL = 4
STEP_ID_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,99}$")
USES_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*\.[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
MAX_USES_LEN = 200
MAX_DEPTH = 20
MAX_RETRY_ATTEMPTS = 20
MAX_DESCRIPTION_LEN = 2000


def json_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply a JSON value nests (objects and arrays), counting no further than limit + 1.
    Iterative, so hostile nesting cannot exhaust the Python stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def payload_errors(payload: Any) -> dict[str, list[str]]:
    """Every structural problem of a payload, keyed by a dotted path (`payload.pipeline.2.uses`)."""
    errors: dict[str, list[str]] = {}

    def add(path: str, message: str) -> None:
        errors.setdefault(path, []).append(message)

    if not isinstance(payload, dict):
        add("payload", "must be an object with 'pipeline' (and optional 'params')")
        return errors
    if json_depth(payload) > MAX_DEPTH:
        add("payload", f"nests deeper than {MAX_DEPTH} levels")
        return errors
    size = len(json.dumps(payload, separators=(",", ":")))
    if size > settings.ORDINAUT_MAX_PAYLOAD_BYTES:
        add("payload", f"is {size} bytes; the limit is {settings.ORDINAUT_MAX_PAYLOAD_BYTES}")
        return errors
    for key in sorted(set(payload) - PAYLOAD_KEYS):
        add(f"payload.{key}", "unknown key; a payload has 'params' and 'pipeline'")
    params = payload.get("params", {})
    if params is not None and not isinstance(params, dict):
        add("payload.params", "must be an object")
    if "pipeline" not in payload:
        add("payload.pipeline", "is required (a list of steps)")
        return errors
    pipeline = payload["pipeline"]
    if not isinstance(pipeline, list):
        add("payload.pipeline", "must be a list of steps")
        return errors
    if len(pipeline) > settings.ORDINAUT_MAX_STEPS:
        add("payload.pipeline", f"has {len(pipeline)} steps; the limit is {settings.ORDINAUT_MAX_STEPS}")
        return errors

    ids: dict[str, int] = {}
    save_as: dict[str, int] = {}
    for index, step in enumerate(pipeline):
        path = f"payload.pipeline.{index}"
        if not isinstance(step, dict):
            add(path, f"step {index}: must be an object with at least 'uses'")
            continue
        step_id = step.get("id", f"step_{index + 1}")
        label = f"step {step_id!r}" if isinstance(step_id, str) and len(step_id) <= 100 else f"step {index}"

        def add_step(key: str, message: str, *, path: str = path, label: str = label) -> None:
            add(f"{path}.{key}" if key else path, f"{label}: {message}")

        for key in sorted(set(step) - STEP_KEYS):
            add_step(key[:100], f"unknown step key; known: {', '.join(sorted(STEP_KEYS))}")
        uses = step.get("uses")
        if not isinstance(uses, str) or not uses:
            add_step("uses", "is required: the tool to call, as 'server.tool'")
        elif len(uses) > MAX_USES_LEN or not USES_RE.match(uses) or ".." in uses:
            add_step("uses", f"{uses[:80]!r} is not a tool name of the form 'server.tool'")
        if not isinstance(step_id, str) or not STEP_ID_RE.match(step_id):
            add_step("id", "must start with a letter or _ and hold only letters, digits, _ and - (max 100)")
        elif step_id in ids:
            add_step("id", f"duplicate step id {step_id!r} (also step {ids[step_id]})")
        else:
            ids[step_id] = index
        alias = step.get("save_as")
        if alias is not None:
            if not isinstance(alias, str) or not STEP_ID_RE.match(alias):
                add_step("save_as", "must be a name like a step id")
            elif alias in save_as:
                add_step("save_as", f"{alias!r} is already used by step {save_as[alias]}")
            else:
                save_as[alias] = index
        description = step.get("description")
        if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION_LEN):
            add_step("description", f"must be a string of at most {MAX_DESCRIPTION_LEN} characters")
        if "if" in step:
            condition = step["if"]
            if not isinstance(condition, str):
                add_step("if", "must be a JMESPath expression string")
            elif len(condition) > EXPR_MAX_LEN:
                add_step("if", f"is longer than {EXPR_MAX_LEN} characters")
            else:
                problem = condition_error(condition)
                if problem:
                    add_step("if", problem)
        for where, problem in template_errors(step.get("with")).items():
            add_step(f"with.{where}" if where else "with", problem)
        for key, problem in _foreach_errors(step, uses):
            add_step(key, problem)
        timeout = step.get("timeout_seconds")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not 0 < timeout <= settings.ORDINAUT_MAX_STEP_TIMEOUT_S
        ):
            add_step("timeout_seconds", f"must be a number in (0, {settings.ORDINAUT_MAX_STEP_TIMEOUT_S}]")
        on_error = step.get("on_error", "fail")
        if on_error not in ON_ERROR:
            add_step("on_error", "must be 'fail' or 'continue'")
        if "on_reject" in step:
            if uses != APPROVAL_TOOL:
                add_step("on_reject", f"applies only to a step that uses {APPROVAL_TOOL}")
            elif step["on_reject"] not in ON_REJECT:
                add_step("on_reject", "must be 'stop' or 'continue'")
        retry = step.get("retry")
        if retry is not None:
            _retry_errors(retry, f"{path}.retry", lambda where, message, label=label: add(where, f"{label}: {message}"))

    for alias, index in save_as.items():
        owner = ids.get(alias)
        if owner is not None and owner != index:
            add(
                f"payload.pipeline.{index}.save_as",
                f"step {index}: save_as {alias!r} collides with the id of step {owner}",
            )
    return errors


def _foreach_errors(step: dict[str, Any], uses: Any) -> list[tuple[str, str]]:
    """Problems of a step's `foreach` (one `${expr}` naming a list, or a list) and `max_parallel`."""
    problems: list[tuple[str, str]] = []
    limit = settings.ORDINAUT_MAX_FOREACH_ITEMS
    if "foreach" in step:
        foreach = step["foreach"]
        if isinstance(foreach, list):
            if len(foreach) > limit:
                problems.append(("foreach", f"has {len(foreach)} items; ORDINAUT_MAX_FOREACH_ITEMS is {limit}"))
        elif not isinstance(foreach, str) or not _one_expression(foreach):
            problems.append(("foreach", "must be one ${...} expression that gives a list (or a list)"))
        else:
            problem = template_errors(foreach).get("")
            if problem:
                problems.append(("foreach", problem))
        if uses in SUSPENDING_TOOLS:
            problems.append(("foreach", f"cannot be used with {uses}: it suspends its step"))
    if "max_parallel" in step:
        parallel = step["max_parallel"]
        ceiling = settings.ORDINAUT_MAX_PARALLEL
        if "foreach" not in step:
            problems.append(("max_parallel", "applies only to a step with a foreach"))
        elif isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= ceiling:
            problems.append(("max_parallel", f"must be an integer 1..{ceiling} (ORDINAUT_MAX_PARALLEL)"))
    return problems


def _one_expression(text: str) -> bool:
    """Whether a string is exactly one `${expr}` (whose value is then any JSON, here a list)."""
    try:
        pieces = template_parse(text.strip())
    except TemplateSyntaxError:
        return True  # its syntax error is reported by template_errors
    return len(pieces) == 1 and isinstance(pieces[0], Expr)


def _retry_errors(retry: Any, path: str, add: Any) -> None:
    if not isinstance(retry, dict):
        add(path, "must be an object {max_attempts, backoff_seconds, backoff_max_seconds}")
        return
    for key in sorted(set(retry) - RETRY_KEYS):
        add(f"{path}.{key}", f"unknown retry key; known: {', '.join(sorted(RETRY_KEYS))}")
    attempts = retry.get("max_attempts")
    if attempts is not None and (
        isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= MAX_RETRY_ATTEMPTS
    ):
        add(f"{path}.max_attempts", f"must be an integer 1..{MAX_RETRY_ATTEMPTS}")
    for key in ("backoff_seconds", "backoff_max_seconds"):
        value = retry.get(key)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not 0 <= value <= settings.ORDINAUT_MAX_COUNTDOWN_S
        ):
            add(f"{path}.{key}", f"must be a number 0..{settings.ORDINAUT_MAX_COUNTDOWN_S}")


def payload_validate(payload: Any) -> dict[str, Any]:
    """The payload, normalised (params defaults to {}), or ValidationFailed naming every bad field."""
    errors = payload_errors(payload)
    if errors:
        first, messages = next(iter(errors.items()))
        raise ValidationFailed(f"{first}: {messages[0]}", fields=errors)
    return {"params": payload.get("params") or {}, "pipeline": payload["pipeline"]}


def step_id_of(step: dict[str, Any], index: int) -> str:
    """A step's id: its own, else `step_<n>` (1-based), as templates name it (`steps.<id>`)."""
    return str(step.get("id") or f"step_{index + 1}")


@dataclass(frozen=True)
class Step:
    """A typed view of one validated pipeline entry (the payload keeps the JSON the agent sent)."""

    index: int
    id: str
    uses: str
    with_: Any
    if_: str | None
    on_error: str
    timeout_seconds: float | None
    retry: dict[str, Any]
    on_reject: str | None = None
    foreach: Any = None
    max_parallel: int = DEFAULT_MAX_PARALLEL

    @classmethod
    def of(cls, pipeline: list[dict[str, Any]], index: int) -> Step:
        entry = pipeline[index]
        return cls(
            index=index,
            id=step_id_of(entry, index),
            uses=str(entry.get("uses", "")),
            with_=entry.get("with", {}),
            if_=entry.get("if"),
            on_error=entry.get("on_error") or "fail",
            timeout_seconds=entry.get("timeout_seconds"),
            retry=entry.get("retry") or {},
            on_reject=entry.get("on_reject"),
            foreach=entry.get("foreach"),
            max_parallel=int(entry.get("max_parallel") or DEFAULT_MAX_PARALLEL),
        )

    @property
    def fans_out(self) -> bool:
        """A `foreach` step: the tool runs once per item, up to `max_parallel` at a time."""
        return self.foreach is not None

    @property
    def continues_on_error(self) -> bool:
        """A failed step fails its run unless it says `on_error: continue`."""
        return self.on_error == "continue"


def _names_of(entry: dict[str, Any], index: int) -> set[str]:
    names = {step_id_of(entry, index)}
    if isinstance(entry.get("save_as"), str):
        names.add(entry["save_as"])
    return names


def tests_decision(entry: Any, names: set[str]) -> bool:
    """Whether a step's `if` reads the output of a step known by one of `names` (its id or save_as)."""
    condition = entry.get("if") if isinstance(entry, dict) else None
    if not isinstance(condition, str):
        return False
    return any(re.search(rf"\bsteps\s*\.\s*{re.escape(name)}\b", condition) for name in names)


def after_rejection(pipeline: list[Any], index: int) -> str:
    """What follows a rejected or expired approval at step `index`: its `on_reject` when it names
    one; else `continue` when a later step's `if` tests the decision (the pipeline handles it), and
    `stop` when none does (the rest of the pipeline is skipped and the run ends, not failed)."""
    entry = pipeline[index]
    explicit = entry.get("on_reject") if isinstance(entry, dict) else None
    if explicit in ON_REJECT:
        return str(explicit)
    names = _names_of(entry, index)
    return "continue" if any(tests_decision(later, names) for later in pipeline[index + 1 :]) else "stop"


def approval_warnings(pipeline: list[Any]) -> list[dict[str, str]]:
    """Steps that would run after a rejected approval without saying so: the approval names no
    `on_reject`, a later step tests the decision (so the run goes on), but this one does not."""
    warnings: list[dict[str, str]] = []
    for index, entry in enumerate(pipeline):
        if not isinstance(entry, dict) or entry.get("uses") != APPROVAL_TOOL or "on_reject" in entry:
            continue
        if after_rejection(pipeline, index) != "continue":
            continue
        names = _names_of(entry, index)
        approval_id = step_id_of(entry, index)
        for later_index in range(index + 1, len(pipeline)):
            later = pipeline[later_index]
            if isinstance(later, dict) and not tests_decision(later, names):
                warnings.append(
                    {
                        "field": f"payload.pipeline.{later_index}",
                        "message": f"step {step_id_of(later, later_index)!r} runs even when the approval "
                        f"{approval_id!r} is rejected or expires: test ${{steps.{sorted(names)[-1]}.status}} "
                        f"in its `if`, or set `on_reject` on {approval_id!r}",
                    }
                )
    return warnings
