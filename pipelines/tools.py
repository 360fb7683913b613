"""The tool registry: resolves a step's `uses` to a callable with input and output JSON Schemas."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ordinaut_site.errors import UnknownTool

BUILTIN_NAMESPACE = "orchestrator"


@dataclass(frozen=True)
class ToolCall:
    """What a tool sees besides its input: where it runs, and how long it may take."""

    run_id: str
    step_id: str
    timeout_s: float


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


_BUILTINS: dict[str, Tool] = {}


def builtin(
    name: str,
    *,
    description: str,
    input_schema: dict[str, Any] | None = None,
    output_schema: dict[str, Any] | None = None,
) -> Callable[[ToolFunc], ToolFunc]:
    """Register a built-in tool under the `orchestrator` namespace."""

    def register(func: ToolFunc) -> ToolFunc:
        full = f"{BUILTIN_NAMESPACE}.{name}"
        _BUILTINS[full] = Tool(full, description, func, input_schema or {}, output_schema)
        return func

    return register


def tool_resolve(name: str) -> Tool:
    tool = _BUILTINS.get(name)
    if tool is None:
        raise UnknownTool(f"no tool named {name!r} is registered")
    return tool


def tool_list() -> list[Tool]:
    return sorted(_BUILTINS.values(), key=lambda t: t.name)


@builtin("echo", description="Returns its input unchanged.")
def echo(payload: Any, call: ToolCall) -> Any:
    return payload
