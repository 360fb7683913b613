"""The tool registry: resolves a step's `uses` to a callable with input and output JSON Schemas.

Resolution walks a chain of resolvers. The first is the in-process registry, holding the built-in
`orchestrator.*` tools (pipelines/builtins.py) and whatever the modules named in
ORDINAUT_TOOL_MODULES register with `tool_register`. Other sources (MCP servers) add a resolver
with `resolver_add`; the engine neither knows nor cares where a tool comes from.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import jsonschema
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from referencing.exceptions import Unresolvable

from ordinaut_site import metrics
from ordinaut_site.errors import StepError, ToolTimeout, UnknownTool

BUILTIN_NAMESPACE = "orchestrator"
BUILTIN_MODULE = "pipelines.builtins"
MAX_SCHEMA_ERRORS = 10


@dataclass(frozen=True)
class ToolCall:
    """What a tool sees besides its input: where it runs, how long it may take, which attempt
    this is, and (for a step that suspended itself) the time it asked to be resumed at."""

    run_id: str
    step_id: str
    timeout_s: float
    attempt: int = 1
    resume_at: datetime | None = None


ToolFunc = Callable[[Any, ToolCall], Any]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    func: ToolFunc
    input_schema: dict[str, Any] = field(default_factory=lambda: {})
    output_schema: dict[str, Any] | None = None
    cost: int = 1

    @property
    def server(self) -> str:
        return self.name.split(".", 1)[0]


class Suspend(Exception):
    """Raised by a tool to be called again at `until` (orchestrator.wait). The engine keeps the
    step running and re-delivers it: by countdown when short, parked in the database when long."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"suspended until {until.isoformat()}")
        self.until = until


class AwaitApproval(Exception):
    """Raised by orchestrator.request_approval: the run waits for a human decision."""

    def __init__(self, *, message: str, data: Any, timeout_s: float) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        self.timeout_s = timeout_s


class ToolResolver(Protocol):
    """A source of tools: returns the tool for a full name (`server.tool`), or None."""

    def resolve(self, name: str) -> Tool | None: ...

    def tools(self) -> Iterable[Tool]: ...


class PythonTools:
    """Tools implemented in Python inside Ordinaut's processes."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, tool: Tool) -> None:
        for schema in (tool.input_schema, tool.output_schema):
            if schema is not None:
                jsonschema.validators.validator_for(schema).check_schema(schema)
        self._tools[tool.name] = tool

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)

    def resolve(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def tools(self) -> Iterable[Tool]:
        return list(self._tools.values())


PYTHON_TOOLS = PythonTools()
_resolvers: list[ToolResolver] = [PYTHON_TOOLS]
_loaded_modules: set[str] = set()
_load_lock = threading.Lock()


def resolver_add(resolver: ToolResolver) -> None:
    """Add a source of tools after the in-process ones (first match wins)."""
    if resolver not in _resolvers:
        _resolvers.append(resolver)


def resolver_remove(resolver: ToolResolver) -> None:
    if resolver in _resolvers and resolver is not PYTHON_TOOLS:
        _resolvers.remove(resolver)


def tool_register(
    name: str,
    *,
    description: str,
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    cost: int = 1,
) -> Callable[[ToolFunc], ToolFunc]:
    """Decorator registering a Python function as the tool `name` (`server.tool`)."""

    def register(func: ToolFunc) -> ToolFunc:
        PYTHON_TOOLS.register(Tool(name, description, func, input_schema or {}, output_schema, cost))
        return func

    return register


def builtin(
    name: str,
    *,
    description: str,
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
    cost: int = 0,
) -> Callable[[ToolFunc], ToolFunc]:
    """Register a built-in tool under the `orchestrator` namespace. Built-ins cost nothing against
    budgets unless they reach outside Ordinaut (orchestrator.http does)."""
    return tool_register(
        f"{BUILTIN_NAMESPACE}.{name}",
        description=description,
        input_schema=input_schema,
        output_schema=output_schema,
        cost=cost,
    )


def _load_tool_modules() -> None:
    """Import the built-ins and ORDINAUT_TOOL_MODULES once per process (lazily: settings may change)."""
    wanted = [BUILTIN_MODULE, *settings.ORDINAUT_TOOL_MODULES]
    if all(module in _loaded_modules for module in wanted):
        return
    with _load_lock:
        for module in wanted:
            if module not in _loaded_modules:
                importlib.import_module(module)
                _loaded_modules.add(module)


def tool_find(name: str) -> Tool | None:
    _load_tool_modules()
    for resolver in _resolvers:
        tool = resolver.resolve(name)
        if tool is not None:
            return tool
    return None


def tool_resolve(name: str) -> Tool:
    """The tool a step calls, its calls counted (ordinaut_tool_calls_total)."""
    tool = tool_find(name)
    if tool is None:
        raise UnknownTool(f"no tool named {name!r} is registered")
    metrics.step_tool(tool.name)
    return metered(tool)


def metered(tool: Tool) -> Tool:
    """The tool with each call counted by server, tool and outcome."""
    func, name = tool.func, tool.name

    def call(arguments: Any, context: ToolCall) -> Any:
        outcome = "error"
        try:
            result = func(arguments, context)
        except (Suspend, AwaitApproval):
            outcome = "suspended"
            raise
        except (ToolTimeout, SoftTimeLimitExceeded):
            outcome = "timeout"
            raise
        except StepError as exc:
            outcome = "retryable" if exc.retryable else "failed"
            raise
        else:
            outcome = "ok"
            return result
        finally:
            metrics.tool_called(name, outcome)

    return dataclasses.replace(tool, func=call)


def tool_list() -> list[Tool]:
    _load_tool_modules()
    seen: dict[str, Tool] = {}
    for resolver in _resolvers:
        for tool in resolver.tools():
            seen.setdefault(tool.name, tool)
    return sorted(seen.values(), key=lambda t: t.name)


_validators: dict[int, tuple[dict[str, Any], Any]] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A compiled validator per schema object (tools keep their schemas for the process' life)."""
    cached = _validators.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    if len(_validators) > 4096:
        _validators.clear()
    _validators[id(schema)] = (schema, validator)
    return validator


def schema_errors(schema: dict[str, Any] | None, value: Any, *, prefix: str = "") -> list[str]:
    """Violations of a JSON Schema by a value, each as `path: message` (at most MAX_SCHEMA_ERRORS)."""
    if not schema:
        return []
    problems: list[str] = []
    try:
        found = sorted(_validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except (jsonschema.SchemaError, jsonschema.exceptions.UnknownType, Unresolvable) as exc:
        return [f"{prefix or '(root)'}: the tool's schema is unusable: {str(exc).splitlines()[0][:200]}"]
    for error in found[:MAX_SCHEMA_ERRORS]:
        where = ".".join(str(part) for part in error.absolute_path)
        where = f"{prefix}.{where}" if prefix and where else (prefix or where or "(root)")
        problems.append(f"{where}: {error.message[:300]}")
    return problems
