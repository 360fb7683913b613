"""Request edge middleware: X-Request-ID on every response, the one error shape, request size limits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from . import logs
from .api import error_body, error_code_for, is_admin_page
from .errors import PayloadTooLarge

REQUEST_ID_HEADER = "X-Request-ID"
# A client-sent id is echoed only when it is short and plain, so it cannot inject into logs.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Headers an error response must keep when it is re-shaped (clients act on them).
_KEPT_ERROR_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")


def safe_request_id(sent: str) -> str:
    """The id of a request that sent `sent` (possibly empty) in X-Request-ID: echoed, or a new one."""
    return sent if _SAFE_REQUEST_ID.match(sent) else uuid.uuid4().hex


def request_id_for(request: HttpRequest) -> str:
    return safe_request_id(request.headers.get(REQUEST_ID_HEADER, ""))


class RequestIdMiddleware:
    """Outermost middleware, so every response (errors and unknown routes too) carries the id."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        with logs.bind(request_id=request_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response


class ErrorShapeMiddleware:
    """Re-shapes any non-JSON error response (405 from a plain view, CSRF 403, ...) into the one shape.

    DRF views and the URL error handlers answer in the shape already; this catches what other
    Django code answers with HTML or an empty body. Admin pages keep their HTML.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or response.streaming or is_admin_page(request):
            return response
        if response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        shaped = JsonResponse(error_body(error_code_for(status), f"{status} {response.reason_phrase}."), status=status)
        for header in _KEPT_ERROR_HEADERS:
            if header in response:
                shaped[header] = response[header]
        return shaped


class RequestLimitsMiddleware:
    """Refuses, before any view reads it, a body declared larger than ORDINAUT_MAX_BODY_BYTES (413)
    and a path or query string carrying NUL characters (400; PostgreSQL text cannot hold them, so a
    lookup by a path segment would fail in the database)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            error = PayloadTooLarge.over_limit()
            return JsonResponse(error_body(error.code, error.message), status=error.status)
        if "\x00" in request.path:
            message = "The URL path must not contain NUL (%00) characters."
            return JsonResponse(error_body("validation_error", message), status=400)
        if "%00" in request.META.get("QUERY_STRING", ""):
            message = "Query parameters must not contain NUL (%00) characters."
            return JsonResponse(error_body("validation_error", message), status=400)
        return self.get_response(request)
