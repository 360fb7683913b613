"""Templates and conditions: `${expr}` JMESPath over the run context, `now` shifts, JMESPath truthiness.

A string that is exactly one `${expr}` becomes the JSON value of expr (numbers stay numbers, objects
stay objects). Inside a longer string each `${expr}` is interpolated: strings as they are, null as
the empty string, everything else as JSON. `$${` is a literal `${`. `${now+24h}` (units s m h d w)
is the run's logical time shifted: s/m/h are elapsed time, d/w are calendar days in the task's
timezone (so `now+1d` keeps the wall-clock time across a DST change). Only JMESPath is evaluated:
no Python, no attribute access, nothing outside the context dict.

Every evaluation runs on a budget (ExpressionBudget): ORDINAUT_EXPR_MAX_STEPS node visits, and
ORDINAUT_EXPR_MAX_ITEMS items built, counted as the value would be written out, so `[@,@]` stages,
which share their halves and cost nothing to build but double what serialising them costs, are
stopped too. A spent budget is ExpressionTooExpensive (code expression_too_expensive).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import jmespath
import jmespath.functions
from django.conf import settings
from jmespath.exceptions import JMESPathError
from jmespath.visitor import Options, TreeInterpreter

from ordinaut_site.errors import ExpressionTooExpensive, TemplateFailed

from .storable import storable_json

EXPR_MAX_LEN = 2000
# Nesting a JMESPath parser can take before Python's recursion limit becomes the judge.
EXPR_MAX_NESTING = 50
NOW_SHIFT_RE = re.compile(r"^\s*now\s*([+-])\s*(\d{1,7})\s*([smhdw])\s*$")
NOW_RE = re.compile(r"^\s*now\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_QUOTES = {"'", '"', "`"}
_OPENERS = {"{": "}", "[": "]", "(": ")"}
JMESPATH_FUNCTIONS = frozenset(jmespath.functions.Functions.FUNCTION_TABLE)


class TemplateSyntaxError(ValueError):
    """A template or condition that cannot be parsed; the message says where and why."""


@dataclass(frozen=True)
class Expr:
    """One `${...}` of a template: its JMESPath text."""

    text: str


Piece = str | Expr


# --- Parsing ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def template_parse(text: str) -> tuple[Piece, ...]:
    """Split a string into literal text and `${expr}` pieces (cached: pipelines repeat)."""
    if "${" not in text:
        return (text,)
    pieces: list[Piece] = []
    literal: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("$${", i):
            literal.append("${")
            i += 3
            continue
        if text.startswith("${", i):
            end = _expr_end(text, i + 2)
            inner = text[i + 2 : end].strip()
            if not inner:
                raise TemplateSyntaxError(f"empty ${{}} at character {i}")
            if len(inner) > EXPR_MAX_LEN:
                raise TemplateSyntaxError(f"expression at character {i} is longer than {EXPR_MAX_LEN} characters")
            _compile(inner)  # syntax errors surface at parse time, with the expression named
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(Expr(inner))
            i = end + 1
            continue
        literal.append(text[i])
        i += 1
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces)


def _expr_end(text: str, start: int) -> int:
    """Index of the `}` closing a `${` whose expression starts at `start`. JMESPath has its own
    braces (multi-select hashes) and quoted strings that may hold `}`; both are skipped."""
    stack: list[str] = []
    i, n = start, len(text)
    while i < n:
        char = text[i]
        if char in _QUOTES:
            i = _quote_end(text, i)
        elif char in _OPENERS:
            stack.append(_OPENERS[char])
            if len(stack) > EXPR_MAX_NESTING:
                raise TemplateSyntaxError(f"expression at character {start - 2} nests too deeply")
        elif char == "}" and not stack:
            return i
        elif char in ")]}" and (not stack or stack.pop() != char):
            raise TemplateSyntaxError(f"unbalanced {char!r} in expression at character {start - 2}")
        i += 1
    raise TemplateSyntaxError(f"unterminated ${{ at character {start - 2} (missing '}}')")


def _quote_end(text: str, start: int) -> int:
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i
        i += 1
    raise TemplateSyntaxError(f"unterminated {quote} quote at character {start}")


@functools.lru_cache(maxsize=4096)
def _compile(expr: str) -> Any:
    if NOW_SHIFT_RE.match(expr):
        return None
    if len(expr) > EXPR_MAX_LEN:
        raise TemplateSyntaxError(f"expression is longer than {EXPR_MAX_LEN} characters")
    if _nesting(expr) > EXPR_MAX_NESTING:
        raise TemplateSyntaxError("expression nests too deeply")
    try:
        compiled = jmespath.compile(expr)
    except JMESPathError as exc:
        raise TemplateSyntaxError(f"invalid JMESPath {expr[:100]!r}: {_one_line(exc)}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise TemplateSyntaxError(f"invalid JMESPath {expr[:100]!r}: {type(exc).__name__}") from None
    unknown = sorted(_function_names(compiled.parsed) - JMESPATH_FUNCTIONS)
    if unknown:
        raise TemplateSyntaxError(
            f"unknown JMESPath function {unknown[0]}() in {expr[:100]!r}; "
            f"known: {', '.join(sorted(JMESPATH_FUNCTIONS))}"
        )
    return compiled


def _function_names(node: Any) -> set[str]:
    names: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "function_expression":
                names.add(str(item.get("value")))
            stack.extend(item.get("children") or [])
        elif isinstance(item, list):
            stack.extend(item)
    return names


def _nesting(expr: str) -> int:
    depth = deepest = 0
    for char in expr:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def strings_in(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string inside a JSON value with its dotted path (`with.query.city`)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from strings_in(item, f"{path}.{index}" if path else str(index))


def has_templates(value: Any) -> bool:
    return any("${" in text for _, text in strings_in(value))


def template_errors(value: Any) -> dict[str, str]:
    """Syntax errors of every template inside a JSON value, by dotted path."""
    errors: dict[str, str] = {}
    for path, text in strings_in(value):
        try:
            pieces = template_parse(text)
        except TemplateSyntaxError as exc:
            errors[path] = str(exc)
            continue
        for piece in pieces:
            problem = isinstance(piece, Expr) and expr_probe_problem(piece.text)
            if problem:
                errors[path] = problem
                break
    return errors


# How the JMESPath AST evaluates a node's children: the first against the node's own input and
# the rest against what the first produced, all against the node's input, or none at all.
_CHAINED_NODES = frozenset(
    {"subexpression", "index_expression", "projection", "value_projection", "filter_projection", "pipe"}
)
_SAME_INPUT_NODES = frozenset(
    {
        "function_expression",
        "multi_select_list",
        "multi_select_dict",
        "key_val_pair",
        "comparator",
        "and_expression",
        "or_expression",
        "not_expression",
        "flatten",
    }
)
_NO_INPUT_NODES = frozenset({"literal", "index", "slice"})


@functools.lru_cache(maxsize=4096)
def _expr_reads_steps(expr: str) -> bool:
    """Whether an expression can see `steps` of the context: a `steps` field, or `@` / `*` (the
    whole context: `values(@)`, `*.x`), read at the context's top level. `params[?steps]` or
    `sort_by(params.l, &steps)` read their own items, not the context. In doubt (an error, a node
    this does not know): yes."""
    try:
        compiled = _compile(expr)
    except TemplateSyntaxError:
        return True
    if compiled is None:  # a `now` shift
        return False
    stack: list[tuple[Any, bool]] = [(compiled.parsed, True)]
    while stack:
        node, at_top = stack.pop()
        kind = node.get("type")
        children = node.get("children") or []
        if kind in ("current", "identity"):
            if at_top:
                return True
        elif kind == "field":
            if at_top and node.get("value") == "steps":
                return True
        elif kind in _CHAINED_NODES:
            if children:
                stack.append((children[0], at_top))
                stack.extend((child, False) for child in children[1:])
        elif kind == "expref":
            stack.extend((child, False) for child in children)
        elif kind in _SAME_INPUT_NODES:
            stack.extend((child, at_top) for child in children)
        elif kind not in _NO_INPUT_NODES:
            return True
    return False


def reads_steps(value: Any, condition: str | None = None) -> bool:
    """Whether a step's `with` templates or its `if` can see the outputs of earlier steps (the
    engine loads them only then). Decided on the parsed JMESPath, so `${values(@)}` or `${*.x}`
    count, and a literal "steps" does not."""
    if isinstance(condition, str):
        try:
            if _expr_reads_steps(condition_expr(condition)):
                return True
        except TemplateSyntaxError:
            return True
    for _, text in strings_in(value):
        if "${" not in text:
            continue
        try:
            pieces = template_parse(text)
        except TemplateSyntaxError:
            return True
        if any(isinstance(piece, Expr) and _expr_reads_steps(piece.text) for piece in pieces):
            return True
    return False


def condition_expr(text: str) -> str:
    """The JMESPath of an `if`: bare, or wrapped in one `${...}`."""
    stripped = text.strip()
    if stripped.startswith("${"):
        pieces = template_parse(stripped)
        if len(pieces) == 1 and isinstance(pieces[0], Expr):
            return pieces[0].text
        raise TemplateSyntaxError("an `if` is one expression: bare JMESPath or a single ${...}")
    return stripped


def condition_error(text: str) -> str | None:
    try:
        expr = condition_expr(text)
        if not expr:
            return "is empty"
        _compile(expr)
    except TemplateSyntaxError as exc:
        return str(exc)
    return expr_probe_problem(expr)


# What a probe evaluates an expression over when it is checked (POST /tasks, PATCH, validate): the
# keys of a step's and a task condition's context, empty. An expression that spends its budget
# over this spends it over any data, so it is refused before it is stored.
_PROBE_CONTEXT: dict[str, Any] = {
    "params": {},
    "steps": {},
    "event": None,
    "now": "2000-01-01T00:00:00+00:00",
    "task": {"id": None, "title": "", "params": {}, "timezone": "UTC"},
    "run": {"id": None, "trigger": "manual", "trigger_key": None, "scheduled_for": None, "replay_of": None},
    "last_run": None,
}


def expr_probe_problem(expr: str) -> str | None:
    """The budget error of an expression over an empty context, or None (other evaluation errors
    depend on the data and are not the checker's business)."""
    return _probe(expr, settings.ORDINAUT_EXPR_MAX_STEPS, settings.ORDINAUT_EXPR_MAX_ITEMS)


@functools.lru_cache(maxsize=4096)
def _probe(expr: str, max_steps: int, max_items: int) -> str | None:
    try:
        expr_evaluate(expr, _PROBE_CONTEXT, ExpressionBudget(max_steps=max_steps, max_items=max_items))
    except ExpressionTooExpensive as exc:
        return exc.message
    except Exception:  # only the budget is judged here
        return None
    return None


# --- Evaluation budget -----------------------------------------------------------------------

STRING_CHARS_PER_ITEM = 64
_FUNCTIONS = jmespath.functions.Functions()
_OPTIONS = Options(custom_functions=_FUNCTIONS)


class ExpressionBudget:
    """The work and size allowance of JMESPath evaluations. One per evaluation, or shared by the
    expressions of one render (a step's `if` and `with`). `steps` counts visited nodes; `items`
    counts the list elements and object keys built. Every value an expression builds is also
    measured as it would be written out (its elements, recursively, a shared part once per use),
    memoised per container, so a tower of `[@,@]` is refused after a few levels, before anything
    serialises it."""

    def __init__(self, *, max_steps: int | None = None, max_items: int | None = None) -> None:
        self.max_steps = settings.ORDINAUT_EXPR_MAX_STEPS if max_steps is None else max_steps
        self.max_items = settings.ORDINAUT_EXPR_MAX_ITEMS if max_items is None else max_items
        self.steps = 0
        self.items = 0
        # id -> (container, written-out size); the container is kept so its id stays its own.
        self._sizes: dict[int, tuple[Any, int]] = {}

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise ExpressionTooExpensive(
                f"expression_too_expensive: more than ORDINAUT_EXPR_MAX_STEPS ({self.max_steps}) evaluation steps",
                budget="ORDINAUT_EXPR_MAX_STEPS",
            )

    def _too_many_items(self) -> ExpressionTooExpensive:
        return ExpressionTooExpensive(
            f"expression_too_expensive: builds more than ORDINAUT_EXPR_MAX_ITEMS ({self.max_items}) items "
            "(list elements and object keys, a value used twice counting twice)",
            budget="ORDINAUT_EXPR_MAX_ITEMS",
        )

    def built(self, value: Any) -> None:
        """Charge a value the expression built (not one it read from the context)."""
        if isinstance(value, (list, dict)):
            self.items += len(value)
        elif isinstance(value, str):
            self.items += len(value) // STRING_CHARS_PER_ITEM
        else:
            return
        if self.items > self.max_items or self.size(value) > self.max_items:
            raise self._too_many_items()

    def size(self, value: Any) -> int:
        """How many items `value` is written out (memoised; raises once it is over max_items, which
        only a value being built asks about, so the walk of a big context value stops early)."""
        if not isinstance(value, (list, dict)):
            return _scalar_size(value)
        known = self._sizes.get(id(value))
        if known is not None:
            return known[1]
        walked = 0
        stack: list[tuple[Any, bool]] = [(value, False)]
        while stack:
            node, children_done = stack.pop()
            members = list(node.values()) if isinstance(node, dict) else node
            if children_done:
                total = 1 + (len(node) if isinstance(node, dict) else 0)
                for member in members:
                    total += self._sizes[id(member)][1] if isinstance(member, (list, dict)) else _scalar_size(member)
                    if total > self.max_items:
                        raise self._too_many_items()
                self._sizes[id(node)] = (node, total)
                continue
            if id(node) in self._sizes:
                continue
            walked += 1 + len(members)
            if walked > self.max_items:
                raise self._too_many_items()
            stack.append((node, True))
            stack.extend((m, False) for m in members if isinstance(m, (list, dict)) and id(m) not in self._sizes)
        return self._sizes[id(value)][1]


def _scalar_size(value: Any) -> int:
    return 1 + len(value) // STRING_CHARS_PER_ITEM if isinstance(value, str) else 1


class BudgetedInterpreter(TreeInterpreter):
    """jmespath's TreeInterpreter charging an ExpressionBudget: every node visited (expression
    references that functions call back included), every value built."""

    def __init__(self, budget: ExpressionBudget) -> None:
        super().__init__(_OPTIONS)
        self.budget = budget

    def visit(self, node: Any, *args: Any, **kwargs: Any) -> Any:
        self.budget.step()
        return super().visit(node, *args, **kwargs)

    def _built(self, value: Any) -> Any:
        self.budget.built(value)
        return value

    def visit_multi_select_list(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_multi_select_list(node, value))

    def visit_multi_select_dict(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_multi_select_dict(node, value))

    def visit_projection(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_projection(node, value))

    def visit_value_projection(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_value_projection(node, value))

    def visit_filter_projection(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_filter_projection(node, value))

    def visit_flatten(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_flatten(node, value))

    def visit_slice(self, node: Any, value: Any) -> Any:
        return self._built(super().visit_slice(node, value))

    def visit_function_expression(self, node: Any, value: Any) -> Any:
        args = [self.visit(child, value) for child in node["children"]]
        result = _FUNCTIONS.call_function(node["value"], args)
        if any(result is arg for arg in args):  # not_null(), to_array() of an array: nothing built
            return result
        return self._built(result)


# --- Evaluation ------------------------------------------------------------------------------


@dataclass
class Rendering:
    """Bookkeeping of one render: the output budget, the expressions' evaluation budget (shared by
    every `${...}` of the render), and expressions that came out null."""

    budget: int = field(default_factory=lambda: settings.ORDINAUT_MAX_RENDERED_BYTES)
    unresolved: list[str] = field(default_factory=list)
    expressions: ExpressionBudget = field(default_factory=ExpressionBudget)

    def spend(self, size: int) -> None:
        self.budget -= size
        if self.budget < 0:
            raise TemplateFailed(
                f"rendered input is larger than ORDINAUT_MAX_RENDERED_BYTES ({settings.ORDINAUT_MAX_RENDERED_BYTES})"
            )


def expr_evaluate(expr: str, context: Any, budget: ExpressionBudget | None = None) -> Any:
    """The value of one expression over the context (null when a path is missing), within the
    budget (a fresh one unless given). ExpressionTooExpensive when the budget is spent."""
    shift = NOW_SHIFT_RE.match(expr)
    if shift and isinstance(context, dict):
        return now_shift(context, sign=shift.group(1), amount=int(shift.group(2)), unit=shift.group(3))
    try:
        compiled = _compile(expr)
    except TemplateSyntaxError as exc:
        raise TemplateFailed(str(exc)) from None
    if compiled is None:  # a `now` shift over something that is not a run context
        return None
    try:
        return BudgetedInterpreter(budget or ExpressionBudget()).visit(compiled.parsed, context)
    except ExpressionTooExpensive as exc:
        raise ExpressionTooExpensive(f"${{{expr[:100]}}}: {exc.message}", budget=exc.budget) from None
    except JMESPathError as exc:
        raise TemplateFailed(f"${{{expr[:100]}}}: {_one_line(exc)}") from None
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise TemplateFailed(f"${{{expr[:100]}}}: {type(exc).__name__}: {_one_line(exc)}") from None


def now_shift(context: dict[str, Any], *, sign: str, amount: int, unit: str) -> str | None:
    base_text = context.get("now")
    if not isinstance(base_text, str):
        return None
    base = datetime.fromisoformat(base_text)
    tz = _context_zone(context) or base.tzinfo
    seconds = amount * UNIT_SECONDS[unit] * (-1 if sign == "-" else 1)
    try:
        if unit in "dw" and isinstance(tz, ZoneInfo):
            # Calendar days: the same wall-clock time N days later, DST or not. A local time
            # that falls in a gap is read with the offset before it (RFC 5545), then normalised.
            local = base.astimezone(tz).replace(tzinfo=None) + timedelta(seconds=seconds)
            shifted = local.replace(tzinfo=tz).astimezone(UTC).astimezone(tz)
        else:
            shifted = base + timedelta(seconds=seconds)
            if tz is not None:
                shifted = shifted.astimezone(tz)
    except OverflowError:
        raise TemplateFailed(f"now{sign}{amount}{unit} is out of range") from None
    return shifted.isoformat()


def _context_zone(context: dict[str, Any]) -> ZoneInfo | None:
    task = context.get("task")
    name = task.get("timezone") if isinstance(task, dict) else None
    if not isinstance(name, str) or not name:
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None


def render(value: Any, context: dict[str, Any], rendering: Rendering | None = None) -> Any:
    """A step's `with`, templates expanded through objects and arrays. TemplateFailed when the
    result cannot be stored (JMESPath literals and functions can make NaN, Infinity or a NUL)."""
    rendering = rendering or Rendering()
    rendered = _render(value, context, rendering)
    try:
        storable_json(rendered, prefix="with")
    except (TypeError, ValueError) as exc:
        raise TemplateFailed(f"the rendered input cannot be stored: {exc}") from None
    return rendered


def _render(value: Any, context: dict[str, Any], rendering: Rendering) -> Any:
    if isinstance(value, str):
        return _render_string(value, context, rendering)
    if isinstance(value, dict):
        return {key: _render(item, context, rendering) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context, rendering) for item in value]
    return value


def _render_string(text: str, context: dict[str, Any], rendering: Rendering) -> Any:
    try:
        pieces = template_parse(text)
    except TemplateSyntaxError as exc:
        raise TemplateFailed(str(exc)) from None
    if len(pieces) == 1:
        piece = pieces[0]
        if isinstance(piece, str):
            return piece
        value = _evaluate_piece(piece, context, rendering)
        if isinstance(value, (dict, list)):
            rendering.spend(len(json.dumps(value, ensure_ascii=False)))
        elif isinstance(value, str):
            rendering.spend(len(value))
        return value
    out: list[str] = []
    for piece in pieces:
        part = piece if isinstance(piece, str) else interpolated(_evaluate_piece(piece, context, rendering))
        rendering.spend(len(part))
        out.append(part)
    return "".join(out)


def _evaluate_piece(piece: Expr, context: dict[str, Any], rendering: Rendering) -> Any:
    value = expr_evaluate(piece.text, context, rendering.expressions)
    if value is None:
        rendering.unresolved.append(piece.text)
    return value


def interpolated(value: Any) -> str:
    """How a value reads inside a longer string: null is empty, strings are themselves, else JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def truthy(value: Any) -> bool:
    """JMESPath truthiness: false, null, "", [] and {} are false; everything else (0 too) is true."""
    if value is None or value is False:
        return False
    if isinstance(value, (str, list, dict)):
        return len(value) > 0
    return True


def condition_evaluate(text: str, context: dict[str, Any], budget: ExpressionBudget | None = None) -> tuple[bool, Any]:
    """(decision, raw value) of an `if` over the context, within the budget (a fresh one unless given)."""
    try:
        expr = condition_expr(text)
    except TemplateSyntaxError as exc:
        raise TemplateFailed(f"if: {exc}") from None
    value = expr_evaluate(expr, context, budget)
    return truthy(value), value
