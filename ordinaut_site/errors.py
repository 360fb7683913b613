"""Typed service errors; the API exception handler maps each to the single error shape."""

from __future__ import annotations

from typing import Any


class OrdinautError(Exception):
    """Base of every error a service raises on purpose. `code` is the API error code."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.extra = extra


class ValidationFailed(OrdinautError):
    code = "validation_error"
    status = 400

    @classmethod
    def on(cls, field: str, message: str) -> ValidationFailed:
        """One error attached to one field (the field is named in the message too)."""
        return cls(f"{field}: {message}", fields={field: [message]})


class NotAuthenticated(OrdinautError):
    code = "not_authenticated"
    status = 401


class PermissionDenied(OrdinautError):
    code = "permission_denied"
    status = 403


class NotFound(OrdinautError):
    code = "not_found"
    status = 404


class Conflict(OrdinautError):
    code = "conflict"
    status = 409


class ToolServerUnreachable(OrdinautError):
    """An MCP tool server could not be asked for its tools (down, timed out, refused our credentials)."""

    code = "tool_server_unreachable"
    status = 502


class PayloadTooLarge(OrdinautError):
    """A request body over ORDINAUT_MAX_BODY_BYTES."""

    code = "payload_too_large"
    status = 413

    @classmethod
    def over_limit(cls) -> PayloadTooLarge:
        from django.conf import settings

        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return cls(f"Request body is larger than {limit} bytes (ORDINAUT_MAX_BODY_BYTES).")


class StepError(Exception):
    """A step's tool call failed. `retryable` says whether another attempt may succeed."""

    code = "step_failed"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class UnknownTool(StepError):
    code = "unknown_tool"


class ToolInputInvalid(StepError):
    code = "input_invalid"


class ToolOutputInvalid(StepError):
    code = "output_invalid"


class ToolTimeout(StepError):
    code = "timeout"
    retryable = True


class ToolUnavailable(StepError):
    """Connection refused, 5xx, protocol hiccup: worth retrying."""

    code = "tool_unavailable"
    retryable = True


class ToolFailed(StepError):
    """The tool ran and reported an error (an MCP result with isError); retryable only if it says so."""

    code = "tool_error"


class ToolAuthFailed(StepError):
    """The tool server refused Ordinaut's credentials (HTTP 401/403), or a credential is not set."""

    code = "tool_auth_failed"


class TemplateFailed(StepError):
    """A `${...}` template or an `if` condition could not be evaluated (bad syntax, output too big)."""

    code = "template_error"


class ExpressionTooExpensive(TemplateFailed):
    """A JMESPath expression (template, `if`, task condition, transform) spent its evaluation budget:
    ORDINAUT_EXPR_MAX_STEPS node visits or ORDINAUT_EXPR_MAX_ITEMS built items. Permanent: the same
    expression over the same data would spend it again. `budget` names the setting."""

    code = "expression_too_expensive"

    def __init__(self, message: str, *, budget: str) -> None:
        super().__init__(message)
        self.budget = budget


class ToolOutputTooLarge(StepError):
    code = "output_too_large"


class HostNotAllowed(StepError):
    """orchestrator.http was asked for a host outside ORDINAUT_HTTP_ALLOWED_HOSTS."""

    code = "host_not_allowed"


class HttpStatusError(StepError):
    """An HTTP call answered with an error status; 5xx, 408 and 429 are worth retrying."""

    code = "http_error"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, retryable=status >= 500 or status in (408, 429))
        self.status = status

    def as_dict(self) -> dict[str, object]:
        return {**super().as_dict(), "status": self.status}


class AttemptsExhausted(StepError):
    """The step's message kept coming back (its worker died each time) past max_attempts."""

    code = "attempts_exhausted"


class StepCanceled(StepError):
    """Recorded on a step that was waiting (approval, parked wait) when its run was canceled."""

    code = "canceled"


class BudgetExceeded(StepError):
    """The task owner's daily tool-call or cost budget is spent: permanent until the next UTC day."""

    code = "budget_exceeded"
