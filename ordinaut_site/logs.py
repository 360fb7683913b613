"""Log correlation: context variables for request, agent, task, run and step, added to every record."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager

LOG_FIELDS = ("request_id", "agent", "task", "run", "step")
_EMPTY: dict[str, str] = {}
_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("ordinaut_log_context")


def current(field: str) -> str | None:
    return _context.get(_EMPTY).get(field)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Add correlation fields for the duration of a block (a request, a job, a step)."""
    merged = {**_context.get(_EMPTY), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def push(**fields: object) -> contextvars.Token[dict[str, str]]:
    """bind() for code that cannot wrap a block (signal handlers around a job): undo with pop()."""
    return _context.set({**_context.get(_EMPTY), **{k: str(v) for k, v in fields.items() if v is not None}})


def pop(token: contextvars.Token[dict[str, str]]) -> None:
    _context.reset(token)


def add(**fields: object) -> None:
    """Add fields to the current scope; use inside a bind() block, which restores on exit."""
    _context.set({**_context.get(_EMPTY), **{k: str(v) for k, v in fields.items() if v is not None}})


class ContextFilter(logging.Filter):
    """Copies the bound correlation fields onto each log record (empty string when unset)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get(_EMPTY)
        # Django logs 4xx/5xx responses (logger django.request) after the middleware has unbound
        # the request id; the record carries the request, which carries the id.
        if "request_id" not in ctx and not hasattr(record, "request_id"):
            request_id = getattr(getattr(record, "request", None), "request_id", None)
            if request_id:
                record.request_id = request_id
        for field in LOG_FIELDS:
            if not hasattr(record, field):
                setattr(record, field, ctx.get(field, ""))
        return True
