"""Request edge middleware: X-Request-ID on every response, the one error shape, request size limits,
and (under the ASGI server) the few long-lived threads each request's synchronous code runs on."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar

from asgiref.sync import AsyncToSync, SyncToAsync, ThreadSensitiveContext, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.core.handlers.base import BaseHandler
from django.db import connections
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


# Under an ASGI server Django runs each request's synchronous code (the middleware, the view) on a
# thread made for that request, and a database connection belongs to a thread: every request opened
# a PostgreSQL connection of its own and, with DB_CONN_MAX_AGE, left it open until the thread was
# collected (B4, docs/benchmarks.md: one web process under load held 60 connections and requests met
# "too many clients"). Instead each request's synchronous code runs on one of REQUEST_THREADS
# long-lived threads, each keeping its connection from request to request (DB_CONN_MAX_AGE and
# DB health checks apply as under WSGI): a web process holds at most this many connections and
# runs at most this many requests' synchronous code at a time (one Python process runs Python on
# one core anyway: scale with processes, deploy/Procfile).
#
# And it runs there in one call: the rest of MIDDLEWARE and the view, loaded as Django loads them
# under WSGI (`_sync_handler`, same settings.MIDDLEWARE, same order, minus this outermost one). In
# the chain Django builds for ASGI, every MiddlewareMixin middleware runs in async mode, and each
# of its process_request/process_view/process_response calls, and the view, is a hop between the
# event loop and the request thread: about 16 thread switches per request, several milliseconds of
# CPU (B4). One call per request also means a request thread runs one request's synchronous code
# from its start to its end: no transaction, connection state or thread-local spans two requests.
REQUEST_THREADS = 4


def _connections_upkeep() -> None:
    """What Django does at each request's start and end (close_old_connections), for the thread it
    runs on: drop a connection that is too old, broken or left out of autocommit. Not inside a
    transaction (a test's): that connection is not this request's to close."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()


def _on_request_thread(call: Callable[[HttpRequest], HttpResponse], request: HttpRequest) -> HttpResponse:
    _connections_upkeep()
    try:
        return call(request)
    finally:
        _connections_upkeep()


class _RequestThreads:
    """REQUEST_THREADS single-thread executors; a request goes to the least busy one."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._executors: list[ThreadPoolExecutor] = []
        self._busy = [0] * count

    async def run(self, call: Callable[[HttpRequest], HttpResponse], request: HttpRequest) -> HttpResponse:
        """`call(request)`, the request's synchronous code, on a request thread, in one call."""
        if not self._executors:  # at the first request: after uvicorn has started (or forked) the process
            self._executors = [
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"request-thread-{n}") for n in range(self.count)
            ]
        index = min(range(self.count), key=self._busy.__getitem__)
        self._busy[index] += 1
        try:
            async with ThreadSensitiveContext(executor=self._executors[index]):
                return await sync_to_async(_on_request_thread)(call, request)
        finally:
            self._busy[index] -= 1


_request_threads = _RequestThreads(REQUEST_THREADS)
# Set while _SyncHandler loads MIDDLEWARE: RequestIdMiddleware then declines (MiddlewareNotUsed).
_loading_sync_chain: ContextVar[bool] = ContextVar("loading_sync_chain", default=False)


class _SyncHandler(BaseHandler):
    """settings.MIDDLEWARE below RequestIdMiddleware and the view, loaded in Django's synchronous
    mode (as under WSGI): what a request thread runs for a request, in one call."""

    def __init__(self) -> None:
        super().__init__()
        token = _loading_sync_chain.set(True)
        try:
            self.load_middleware(is_async=False)
        finally:
            _loading_sync_chain.reset(token)

    def chain(self, request: HttpRequest) -> HttpResponse:
        # The chain only: Django's ASGI handler does the rest of get_response (the URLconf, the
        # request's closers, the log line of an error response) around RequestIdMiddleware.
        response: HttpResponse = self._middleware_chain(request)  # type: ignore[attr-defined]
        return response


def _under_asgi_handler() -> bool:
    """Called by Django's ASGI handler (a thread-sensitive context of its own for the request) with no
    synchronous caller waiting above: the test client and WSGI call through async_to_sync, and their
    synchronous code (a test's transaction) must stay on the caller's thread."""
    return (
        SyncToAsync.thread_sensitive_context.get(None) is not None
        and getattr(AsyncToSync.executors, "current", None) is None
    )


class RequestIdMiddleware:
    """Outermost middleware, so every response (errors and unknown routes too) carries the id.

    Asynchronous, so that under the ASGI server it can send the request's synchronous rest (the other
    middleware and the view, as `_SyncHandler` loads them) to one of the request threads above, in
    one call; called synchronously (the test client, WSGI), Django adapts it and everything stays on
    the caller's thread, through the chain Django built."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> None:
        if _loading_sync_chain.get():
            raise MiddlewareNotUsed  # the request threads' chain is what runs below this one
        self.get_response = get_response
        self._sync_handler: _SyncHandler | None = None
        markcoroutinefunction(self)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_for(request)
        request.request_id = request_id  # type: ignore[attr-defined]
        with logs.bind(request_id=request_id):
            if _under_asgi_handler():
                if self._sync_handler is None:  # at the first request, on the event loop (no await: once)
                    self._sync_handler = _SyncHandler()
                response = await _request_threads.run(self._sync_handler.chain, request)
            else:
                response = await self.get_response(request)
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
