"""API plumbing shared by every app: the one error shape, pagination, JSON 400/403/404/500 handlers."""

from __future__ import annotations

import logging
import re
from typing import Any

from django.core.exceptions import DisallowedHost, RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, pagination, routers, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from . import logs
from .errors import OrdinautError, PayloadTooLarge, ValidationFailed
from .throttling import unauthenticated_wait

logger = logging.getLogger(__name__)

# Object ids in URLs are UUIDs; anything else is a missing route (404), never a query error.
UUID_LOOKUP = "[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"

_DRF_CODES = {
    400: "validation_error",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    502: "tool_server_unreachable",
}
# Django's admin is a browser UI: its error pages stay HTML. Everything else answers JSON.
ADMIN_PATH_PREFIX = "/admin/"
INTERNAL_ERROR_MESSAGE = "Internal error; it has been logged."


def error_code_for(status: int) -> str:
    """The API error code of an HTTP status (docs/api.md), "error" for one it does not name."""
    return _DRF_CODES.get(status, "internal_error" if status >= 500 else "error")


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error, "request_id": logs.current("request_id") or ""}


def flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested ValidationError detail -> {"a.b.0.c": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and not prefix:
                name = "non_field_errors"
            out.update(flatten_fields(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(flatten_fields(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def validation_message(fields: dict[str, list[str]]) -> str:
    first_field, messages = next(iter(fields.items()))
    message = messages[0] if messages else "invalid"
    if first_field == "non_field_errors":
        return message
    more = f" (and {len(fields) - 1} more field(s))" if len(fields) > 1 else ""
    return f"{first_field}: {message}{more}"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Every API error in the shape of docs/api.md, including DRF's own and unexpected ones."""
    exc = _translate_django_error(exc)
    if isinstance(exc, OrdinautError):
        response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        # The per-IP limit of requests without a (valid) token: DRF never throttles them itself.
        request = context.get("request")
        wait = unauthenticated_wait(request) if request is not None else None
        if wait is not None:
            exc = exceptions.Throttled(wait=wait)

    handled = drf_exception_handler(exc, context)
    if handled is None:
        logger.error("unhandled error in API view", exc_info=exc)
        set_rollback()
        return Response(error_body("internal_error", INTERNAL_ERROR_MESSAGE), status=500)

    response = handled
    status = response.status_code
    code = error_code_for(status)
    if isinstance(exc, exceptions.ValidationError):
        fields = flatten_fields(exc.detail)
        body = error_body("validation_error", validation_message(fields), fields)
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("validation_error", f"Malformed request body: {exc.detail}")
    else:
        detail = getattr(exc, "detail", None)
        message = str(detail) if detail is not None else str(exc)
        body = error_body(code, message)
    response.data = body
    return response


def _translate_django_error(exc: Exception) -> Exception:
    """Django's own errors raised inside a DRF view, as the typed errors the handler knows."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge.over_limit()
    if isinstance(exc, SuspiciousOperation):
        return ValidationFailed(f"Bad request: {exc}")
    if isinstance(exc, DjangoValidationError):
        if hasattr(exc, "error_dict"):
            fields = {name: [str(m) for m in messages] for name, messages in exc.message_dict.items()}
            return ValidationFailed(validation_message(fields), fields=fields)
        return ValidationFailed("; ".join(str(m) for m in exc.messages))
    return exc


class Router(routers.SimpleRouter):
    """docs/api.md: a trailing slash is accepted too (and never redirected)."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


class QueryParamsSerializer(serializers.Serializer):
    """The query parameters of a GET endpoint: one it does not know is a 400 naming it, never
    silently ignored (`/runs?task_idd=...` must not list every run). Pagination's `limit` and
    `offset`, and DRF's `format`, are known everywhere."""

    ALWAYS_KNOWN = frozenset({"limit", "offset", "format"})

    def to_internal_value(self, data: Any) -> Any:
        if hasattr(data, "keys"):
            known = set(self.fields) | self.ALWAYS_KNOWN
            unknown = sorted(set(data.keys()) - known)
            if unknown:
                listed = ", ".join(sorted(known - {"format"}))
                raise serializers.ValidationError(
                    {name[:100]: [f"unknown query parameter; known: {listed}"] for name in unknown[:20]}
                )
        return super().to_internal_value(data)


_WHOLE_NUMBER = re.compile(r"^[0-9]{1,9}$")
MAX_OFFSET = 999_999_999


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """`?limit=&offset=` (docs/api.md). Out of range or not a whole number is a 400, never silently ignored."""

    default_limit = 50
    max_limit = 500

    def _whole_number(self, request: Any, name: str, default: int, minimum: int, maximum: int) -> int:
        values = request.query_params.getlist(name)
        if not values:
            return default
        if len(values) > 1 or not _WHOLE_NUMBER.match(values[0]) or not minimum <= int(values[0]) <= maximum:
            raise ValidationFailed.on(name, f"must be one whole number from {minimum} to {maximum}")
        return int(values[0])

    def get_limit(self, request: Any) -> int:
        return self._whole_number(request, self.limit_query_param, self.default_limit, 1, self.max_limit)

    def get_offset(self, request: Any) -> int:
        return self._whole_number(request, self.offset_query_param, 0, 0, MAX_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters: list[dict[str, Any]] = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


def is_admin_page(request: HttpRequest) -> bool:
    return request.path.startswith(ADMIN_PATH_PREFIX)


def json_404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_admin_page(request):
        return defaults.page_not_found(request, exception or Http404())
    return JsonResponse(error_body("not_found", f"Nothing here: {request.path[:200]}"), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    # Django has logged the exception (logger django.request) with the request id already.
    return JsonResponse(error_body("internal_error", INTERNAL_ERROR_MESSAGE), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    if isinstance(exception, RequestDataTooBig):
        error = PayloadTooLarge.over_limit()
        return JsonResponse(error_body(error.code, error.message), status=error.status)
    if isinstance(exception, DisallowedHost):
        message = "The Host header names a host this server does not answer for (ALLOWED_HOSTS)."
    else:
        message = "Bad request."
    return JsonResponse(error_body("validation_error", message), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_admin_page(request):
        return defaults.permission_denied(request, exception or DjangoPermissionDenied())
    return JsonResponse(error_body("permission_denied", "Forbidden."), status=403)


# --- OpenAPI description of the error shape --------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(
        help_text="validation_error, not_authenticated, permission_denied, not_found, method_not_allowed, "
        "conflict, payload_too_large, unsupported_media_type, rate_limited, internal_error, "
        "tool_server_unreachable, ..."
    )
    message = serializers.CharField(help_text="A human sentence.")
    # The metaclass collects declared fields, so a field may be named "fields" (the error shape says so).
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation messages by field path (e.g. payload.pipeline.0.uses).",
    )


class ErrorSerializer(serializers.Serializer):
    """The one error shape of every 4xx and 5xx answer (OpenAPI component "Error")."""

    error = ErrorDetailSerializer()
    request_id = serializers.CharField(help_text="Also in the X-Request-ID header.")


ERROR_DESCRIPTIONS = {
    400: "Invalid input (the offending fields are named).",
    401: "Missing, invalid, expired or revoked bearer token.",
    403: "The token lacks the scope this endpoint needs.",
    404: "No such object, or it belongs to another agent.",
    405: "Method not allowed.",
    409: "Conflict with the current state (or an Idempotency-Key reused with another body).",
    413: "Request body too large.",
    415: "Unsupported media type (send application/json).",
    429: "Rate limited; retry after the Retry-After header's seconds.",
    500: "Internal error (never expected; logged with the request id).",
    502: "A tool server could not be reached or refused Ordinaut (tool_server_unreachable).",
}


def error_responses(*statuses: int) -> dict[int, OpenApiResponse]:
    """`extend_schema(responses={201: X, **error_responses(409)})`: error statuses in the one shape.

    Every operation gets 400, 401, 403, 404, 413, 415, 429 and 500 from the schema hook already;
    name only the extra ones an endpoint answers (typically 409).
    """
    return {
        status: OpenApiResponse(response=ErrorSerializer, description=ERROR_DESCRIPTIONS.get(status, "Error."))
        for status in statuses
    }
