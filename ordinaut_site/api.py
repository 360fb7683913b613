"""API plumbing shared by every app: the one error shape, pagination, JSON 404/500 handlers."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from rest_framework import exceptions, pagination, routers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from . import logs
from .errors import OrdinautError

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
}


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error, "request_id": logs.current("request_id") or ""}


def _flatten_fields(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested ValidationError detail -> {"a.b.0.c": ["message", ...]}."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "non_field_errors" and not prefix:
                name = "non_field_errors"
            out.update(_flatten_fields(value, name))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten_fields(item, f"{prefix}.{index}" if prefix else str(index)))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _validation_message(fields: dict[str, list[str]]) -> str:
    first_field, messages = next(iter(fields.items()))
    message = messages[0] if messages else "invalid"
    if first_field == "non_field_errors":
        return message
    more = f" (and {len(fields) - 1} more field(s))" if len(fields) > 1 else ""
    return f"{first_field}: {message}{more}"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Every API error in the shape of API.md, including DRF's own and unexpected ones."""
    if isinstance(exc, OrdinautError):
        response = Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    handled = drf_exception_handler(exc, context)
    if handled is None:
        logger.exception("unhandled error in API view", exc_info=exc)
        return Response(error_body("internal_error", "Internal error; it has been logged."), status=500)

    response = handled
    status = response.status_code
    code = _DRF_CODES.get(status, "error")
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten_fields(exc.detail)
        body = error_body("validation_error", _validation_message(fields), fields)
    elif isinstance(exc, exceptions.ParseError):
        body = error_body("validation_error", f"Malformed request body: {exc.detail}")
    else:
        detail = getattr(exc, "detail", None)
        message = str(detail) if detail is not None else str(exc)
        body = error_body(code, message)
    response.data = body
    return response


class Router(routers.SimpleRouter):
    """API.md: a trailing slash is accepted too (and never redirected)."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    default_limit = 50
    max_limit = 500


def json_404(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("not_found", f"No route for {request.path}."), status=404)


def json_500(request: HttpRequest) -> JsonResponse:
    return JsonResponse(error_body("internal_error", "Internal error; it has been logged."), status=500)


def json_400(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("validation_error", "Bad request."), status=400)


def json_403(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    return JsonResponse(error_body("permission_denied", "Forbidden."), status=403)
