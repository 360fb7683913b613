"""Under Django's ASGI handler, a request's synchronous code (MIDDLEWARE below RequestIdMiddleware and
the view) runs on a request thread in one call, loaded as under WSGI (ordinaut_site/middleware.py):
not the chain Django builds for ASGI, where each MiddlewareMixin hook and the view is a hop between
the event loop and the thread. What the middleware do is unchanged: the admin's session, CSRF and
frame headers, the API's error shape and request id."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import override_settings

from ordinaut_site import middleware

pytestmark = pytest.mark.django_db(transaction=True)
SEEN: list[list[str]] = []


class StackRecorder:
    """The innermost middleware: records, as each view is about to run, the functions on its stack."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view: Any, args: Any, kwargs: Any) -> None:
        SEEN.append([frame.name for frame in traceback.extract_stack(sys._getframe())])


@pytest.fixture
def app() -> Iterator[Any]:
    SEEN.clear()
    with override_settings(MIDDLEWARE=[*settings.MIDDLEWARE, f"{__name__}.StackRecorder"]):
        yield get_asgi_application()
    # The request threads keep their connections from request to request: not past this test's database.
    for executor in middleware._request_threads._executors:
        executor.submit(connections.close_all).result()


def request(app: Any, path: str, *, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    async def call() -> tuple[int, dict[str, str], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"localhost"), *(headers or [])],
            "client": ("127.0.0.1", 40000),
            "server": ("localhost", 80),
        }
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(30)
        body = b""
        while True:
            message = await communicator.receive_output(30)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await communicator.wait(30)
        found = {k.decode().lower(): v.decode() for k, v in start["headers"]}
        found["set-cookie"] = " ".join(v.decode() for k, v in start["headers"] if k.lower() == b"set-cookie")
        return start["status"], found, body

    return asyncio.run(call())


def test_the_view_runs_inside_one_call_on_a_request_thread(app: Any) -> None:
    status, headers, _ = request(app, "/health/live", headers=[(b"x-request-id", b"one-call")])
    assert status == 200
    assert headers["x-request-id"] == "one-call"
    (stack,) = SEEN
    assert "_on_request_thread" in stack
    assert stack.count("thread_handler") == 1, "one hop from the event loop to the request thread"
    assert "_get_response" in stack
    assert "_get_response_async" not in stack, "not the chain Django builds for ASGI"
    assert "__acall__" not in stack, "no middleware in async mode"


def test_admin_pages_keep_their_session_csrf_and_frame_headers(app: Any) -> None:
    status, headers, body = request(app, "/admin/login/")
    assert status == 200
    assert b"csrfmiddlewaretoken" in body
    assert "csrftoken=" in headers["set-cookie"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"

    status, headers, body = request(app, "/admin/login/", method="POST")
    assert status == 403, "CSRF still refuses a form post without its token"
    assert headers["content-type"].startswith("text/html"), "admin pages keep their HTML"


def test_api_errors_keep_their_shape_and_request_id(app: Any) -> None:
    status, headers, body = request(app, "/tasks")
    assert status == 401
    assert headers["content-type"].startswith("application/json")
    assert b'"error"' in body
    assert headers["x-request-id"]
    status, headers, body = request(app, "/no/such/route")
    assert status == 404
    assert headers["content-type"].startswith("application/json")
