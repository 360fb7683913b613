"""Every error, whichever layer raises it, answers in the one shape with X-Request-ID (docs/api.md)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import hypothesis
import pytest
from django.contrib.auth.models import User
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import include, path
from hypothesis import strategies as st
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from ordinaut_site import api
from ordinaut_site.errors import PayloadTooLarge, ValidationFailed
from ordinaut_site.logs import ContextFilter
from ordinaut_site.parsers import JSONParser
from runs.models import Run
from tasks.models import Event
from tests.support.pipelines import echo_pipeline, manual_task_body

pytestmark = pytest.mark.django_db


def assert_error_shape(response: Any, status: int, code: str) -> dict[str, Any]:
    """The response is `status` in the one error shape with `code`, and carries its request id."""
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "request_id"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert body["request_id"]
    assert body["request_id"] == response["X-Request-ID"]
    return body


# --- A test-only URL configuration: the real one plus views that fail on purpose ---------------


class ExplodingView(APIView):
    authentication_classes: list[Any] = []
    permission_classes: list[Any] = []

    def get(self, request: Request) -> Response:
        raise RuntimeError("boom in a DRF view")


def exploding_django_view(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom in a plain Django view")


urlpatterns = [
    path("explode/drf", ExplodingView.as_view()),
    path("explode/django", exploding_django_view),
    path("", include("ordinaut_site.urls")),
]
handler400 = "ordinaut_site.api.json_400"
handler403 = "ordinaut_site.api.json_403"
handler404 = "ordinaut_site.api.json_404"
handler500 = "ordinaut_site.api.json_500"


# --- Routes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/nope", "/tasks/not-a-uuid", "/agents/00000000-0000-0000-0000-000000000000/x"])
def test_unknown_route_is_a_json_404_with_request_id(agent: Any, url: str) -> None:
    body = assert_error_shape(agent.client.get(url), 404, "not_found")
    assert url in body["error"]["message"]


def test_unknown_route_without_a_token_is_a_json_404_too() -> None:
    assert_error_shape(Client().get("/wp-login.php"), 404, "not_found")


def test_client_request_id_is_echoed_on_errors() -> None:
    response = Client().get("/nope", HTTP_X_REQUEST_ID="trace-42.a")
    body = assert_error_shape(response, 404, "not_found")
    assert body["request_id"] == "trace-42.a"


def test_unsafe_client_request_id_is_replaced() -> None:
    response = Client().get("/nope", HTTP_X_REQUEST_ID="bad id\nwith newline")
    body = assert_error_shape(response, 404, "not_found")
    assert body["request_id"] != "bad id\nwith newline"


def test_admin_pages_keep_their_html_404(db: Any) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    response = client.get("/admin/no-such-app/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")
    assert response["X-Request-ID"]


# --- DRF's own errors ---------------------------------------------------------------------------


def test_method_not_allowed_is_405_with_allow_header(agent: Any) -> None:
    response = agent.client.put("/agents/me", {}, format="json")
    assert_error_shape(response, 405, "method_not_allowed")
    assert "GET" in response["Allow"]


def test_method_not_allowed_on_a_plain_django_view_is_shaped_too() -> None:
    response = Client().post("/health/live")
    assert_error_shape(response, 405, "method_not_allowed")
    assert response["Allow"] == "GET"


def test_unacceptable_accept_header_is_406(agent: Any) -> None:
    assert_error_shape(agent.client.get("/agents/me", HTTP_ACCEPT="text/html"), 406, "not_acceptable")


def test_form_body_is_415(make_agent: Any) -> None:
    admin = make_agent(admin=True)
    response = admin.client.post("/agents", "name=x", content_type="application/x-www-form-urlencoded")
    assert_error_shape(response, 415, "unsupported_media_type")


def test_missing_token_is_401_and_bad_token_too() -> None:
    assert_error_shape(APIClient().get("/agents/me"), 401, "not_authenticated")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer ord_abcdefgh_not-a-real-secret")
    assert_error_shape(client.get("/agents/me"), 401, "not_authenticated")


@pytest.mark.parametrize(
    "header", ["Bearer ord_\x00\x00\x00\x00\x00\x00\x00\x00_x", "Bearer ord_ÿÿÿÿÿÿÿÿ_x", "Basic abc"]
)
def test_strange_authorization_headers_are_401_not_500(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_error_shape(client.get("/agents/me"), 401, "not_authenticated")


# --- Request bodies -----------------------------------------------------------------------------


def post_raw(client: APIClient, body: bytes | str, url: str = "/agents") -> Any:
    return client.post(url, body, content_type="application/json")


@pytest.fixture
def admin_client(make_agent: Any) -> APIClient:
    return make_agent(admin=True).client


def test_malformed_json_is_400(admin_client: APIClient) -> None:
    body = assert_error_shape(post_raw(admin_client, b'{"name": '), 400, "validation_error")
    assert "not valid JSON" in body["error"]["message"]


def test_bad_utf8_is_400(admin_client: APIClient) -> None:
    body = assert_error_shape(post_raw(admin_client, b'{"name": "\xff\xfe"}'), 400, "validation_error")
    assert "UTF-8" in body["error"]["message"]


def test_nan_is_not_json(admin_client: APIClient) -> None:
    assert_error_shape(post_raw(admin_client, b'{"name": NaN}'), 400, "validation_error")


@override_settings(ORDINAUT_MAX_JSON_DEPTH=8)
def test_json_deeper_than_the_limit_is_400_naming_where(admin_client: APIClient) -> None:
    deep = {"name": "x", "scopes": [], "contact": "", "extra": [[[[[[[[["too deep"]]]]]]]]]}
    body = assert_error_shape(post_raw(admin_client, json.dumps(deep)), 400, "validation_error")
    assert "ORDINAUT_MAX_JSON_DEPTH" in body["error"]["message"]
    assert list(body["error"]["fields"]) == ["extra.0.0.0.0.0.0.0"]


def test_json_deeper_than_python_can_parse_is_400_not_500(admin_client: APIClient) -> None:
    body = assert_error_shape(post_raw(admin_client, "[" * 100_000 + "]" * 100_000), 400, "validation_error")
    assert "deeper" in body["error"]["message"]


@override_settings(ORDINAUT_MAX_JSON_STRING_CHARS=10)
def test_long_string_is_400_naming_the_field(admin_client: APIClient) -> None:
    response = post_raw(admin_client, json.dumps({"name": "x" * 11, "scopes": []}))
    body = assert_error_shape(response, 400, "validation_error")
    assert body["error"]["fields"] == {"name": [body["error"]["fields"]["name"][0]]}
    assert "11 characters" in body["error"]["message"]


@override_settings(ORDINAUT_MAX_JSON_ITEMS=3)
def test_too_many_items_is_400(admin_client: APIClient) -> None:
    response = post_raw(admin_client, json.dumps({"name": "x", "scopes": ["a", "b", "c", "d"]}))
    body = assert_error_shape(response, 400, "validation_error")
    assert "scopes" in body["error"]["fields"]


@pytest.mark.parametrize("text", ["nul \\u0000 here", "lone \\ud800 surrogate"])
def test_strings_postgres_cannot_store_are_400(admin_client: APIClient, text: str) -> None:
    response = post_raw(admin_client, f'{{"name": "{text}", "scopes": []}}')
    body = assert_error_shape(response, 400, "validation_error")
    assert "name" in body["error"]["fields"]


def test_nul_in_a_key_is_400(admin_client: APIClient) -> None:
    assert_error_shape(post_raw(admin_client, '{"na\\u0000me": "x"}'), 400, "validation_error")


# JSON has no Infinity, but a number too large for a double parses to inf (and -inf), which
# jsonb cannot store and templates cannot render: a 400 naming where, before any view sees it.
@pytest.mark.parametrize(
    ("url", "body", "field"),
    [
        ("/events", '{"topic": "a.b", "payload": {"x": 1e400}}', "payload.x"),
        ("/events", '{"topic": "a.b", "payload": {"x": [1, -1e400]}}', "payload.x.1"),
        ("/tasks/{task}/run_now", '{"params": {"x": -1e400}}', "params.x"),
        ("/pipelines/validate", '{"payload": {"pipeline": []}, "params": {"x": 1e400}}', "params.x"),
        ("/schedules/preview", '{"schedule_kind": "interval", "schedule_expr": "60", "count": 1e999}', "count"),
    ],
)
def test_numbers_beyond_a_double_are_400_naming_where(agent: Any, url: str, body: str, field: str) -> None:
    task = agent.client.post("/tasks", manual_task_body(echo_pipeline(1)), format="json").json()["id"]

    response = post_raw(agent.client, body, url.format(task=task))

    error = assert_error_shape(response, 400, "validation_error")["error"]
    assert list(error["fields"]) == [field]
    assert "finite" in error["message"]
    assert not Event.objects.exists()
    assert not Run.objects.exists()


# Any JSON text, hostile numbers and strings included: the parser answers data that PostgreSQL's
# jsonb and a strict encoder take, or a 400 (ValidationFailed); never anything else.
_JSON_SCALARS = st.one_of(
    st.sampled_from(["1e400", "-1e400", "1E+999", "5e-400", "1e308", "-0.0", "null", "true"]),
    st.sampled_from(['"\\u0000"', '"a\\ud800"', '"\\udfff"', '"ok"']),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.text(max_size=5).map(json.dumps),
)
_JSON_TEXTS = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
        | st.dictionaries(st.text(max_size=3), inner, max_size=4).map(
            lambda members: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in members.items()) + "}"
        )
    ),
    max_leaves=12,
)


@hypothesis.settings(max_examples=300, derandomize=True, deadline=None, database=None)
@hypothesis.given(text=_JSON_TEXTS)
def test_the_parser_answers_storable_json_or_a_validation_error(text: str) -> None:
    try:
        data = JSONParser().parse(io.BytesIO(text.encode()))
    except ValidationFailed:
        return
    dumped = json.dumps(data, allow_nan=False, ensure_ascii=False)  # ValueError on inf
    assert "\\u0000" not in dumped
    dumped.encode("utf-8")  # UnicodeEncodeError on a lone surrogate


# RRULE parts out of range once crashed dateutil inside the request (TypeError, IndexError,
# ZeroDivisionError): tests/tasks/test_rrule_ranges.py has the whole table; these are the ones seen.
CRASHING_RULES = [
    "FREQ=SECONDLY;BYSECOND=99",
    "FREQ=SECONDLY;BYSECOND=60",
    "FREQ=MINUTELY;BYSECOND=-1",
    "FREQ=MINUTELY;BYMINUTE=99",
    "FREQ=HOURLY;BYHOUR=25",
    "FREQ=DAILY;INTERVAL=0",
    "FREQ=MONTHLY;BYDAY=+60FR",
]


@pytest.mark.parametrize("rule", CRASHING_RULES)
def test_out_of_range_rrule_parts_are_400_on_schedule_expr(agent: Any, rule: str) -> None:
    schedule = {"schedule_kind": "rrule", "schedule_expr": rule, "timezone": "UTC"}
    task = {"title": "t", "payload": echo_pipeline(1), **schedule}

    for url, body in (("/tasks", task), ("/schedules/preview", {**schedule, "count": 3})):
        response = agent.client.post(url, body, format="json")
        error = assert_error_shape(response, 400, "validation_error")["error"]
        assert list(error["fields"]) == ["schedule_expr"], url
        assert rule.split(";")[-1] in error["message"], url


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_body_over_the_limit_is_413(admin_client: APIClient) -> None:
    response = post_raw(admin_client, json.dumps({"name": "x" * 2000, "scopes": []}))
    body = assert_error_shape(response, 413, "payload_too_large")
    assert "1000 bytes" in body["error"]["message"]


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_parser_refuses_a_body_longer_than_its_content_length() -> None:
    with pytest.raises(PayloadTooLarge):
        JSONParser().parse(io.BytesIO(b'"' + b"x" * 2000 + b'"'))


def test_nul_in_the_query_string_is_400(agent: Any) -> None:
    assert_error_shape(agent.client.get("/audit?action=%00"), 400, "validation_error")


# A NUL in a path segment reached a lookup query, which PostgreSQL refused (500).
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/tool-servers/a%00b"),
        ("post", "/tool-servers/a%00b/refresh"),
        ("get", "/tools/a%00b"),
        ("get", "/tools/a.b%00"),
        ("get", "/tasks/%00"),
    ],
)
def test_nul_in_the_path_is_400(make_agent: Any, method: str, url: str) -> None:
    client = make_agent(admin=True).client
    body = assert_error_shape(getattr(client, method)(url), 400, "validation_error")
    assert "NUL" in body["error"]["message"]


# --- Django-level errors ------------------------------------------------------------------------


def test_disallowed_host_is_400_in_the_shape() -> None:
    response = Client().get("/agents/me", HTTP_HOST="evil.example")
    body = assert_error_shape(response, 400, "validation_error")
    assert "ALLOWED_HOSTS" in body["error"]["message"]


def test_request_data_too_big_raised_by_django_is_413() -> None:
    request = RequestFactory().post("/x")
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=10):
        response = api.json_400(request, RequestDataTooBig("too big"))
    assert response.status_code == 413
    assert json.loads(response.content)["error"]["code"] == "payload_too_large"


# --- Unexpected exceptions ----------------------------------------------------------------------


@pytest.mark.urls("tests.api.test_errors")
def test_unexpected_exception_in_a_drf_view_is_500_logged_with_request_id(caplog: Any) -> None:
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.ERROR):
        response = APIClient().get("/explode/drf", HTTP_X_REQUEST_ID="req-500")
    body = assert_error_shape(response, 500, "internal_error")
    assert "boom" not in json.dumps(body), "internals are logged, not shown"
    logged = [r for r in caplog.records if r.exc_info and "boom in a DRF view" in str(r.exc_info[1])]
    assert logged
    assert logged[0].request_id == "req-500"
    responses_logged = [r for r in caplog.records if r.name == "django.request"]
    assert responses_logged, "Django logs the 500 response too"
    assert {r.request_id for r in responses_logged} == {"req-500"}


@pytest.mark.urls("tests.api.test_errors")
def test_unexpected_exception_in_a_plain_view_is_500_in_the_shape(caplog: Any) -> None:
    caplog.handler.addFilter(ContextFilter())
    with caplog.at_level(logging.ERROR):
        response = Client(raise_request_exception=False).get("/explode/django", HTTP_X_REQUEST_ID="req-501")
    assert_error_shape(response, 500, "internal_error")
    logged = [r for r in caplog.records if r.exc_info and "boom in a plain Django view" in str(r.exc_info[1])]
    assert logged
    assert logged[0].request_id == "req-501"


# --- The ASGI entry point (what uvicorn serves) refuses big bodies before Django spools them ----


def asgi_call(headers: list[tuple[bytes, bytes]], chunks: list[bytes], method: str = "POST") -> dict[str, Any]:
    """Run one HTTP request through ordinaut_site.asgi.application; returns status, headers, body."""
    from ordinaut_site.asgi import application

    scope = {"type": "http", "method": method, "path": "/agents", "raw_path": b"/agents", "query_string": b"",
             "headers": headers, "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000), "root_path": "", "asgi": {"version": "3.0"}}  # fmt: skip
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # the client stays connected until the response is sent
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(application(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "body": json.loads(body)}


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_asgi_refuses_a_declared_big_body_with_413() -> None:
    headers = [(b"host", b"testserver"), (b"content-length", b"5000"), (b"x-request-id", b"asgi-1")]
    result = asgi_call(headers, [b"x" * 5000])
    assert result["status"] == 413
    assert result["body"]["error"]["code"] == "payload_too_large"
    assert result["body"]["request_id"] == "asgi-1"
    assert result["headers"][b"X-Request-ID"] == b"asgi-1"


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000)
def test_asgi_cuts_an_undeclared_body_at_the_limit_with_413() -> None:
    result = asgi_call([(b"host", b"testserver")], [b"x" * 600, b"x" * 600, b"x" * 600])
    assert result["status"] == 413
    assert result["body"]["error"]["code"] == "payload_too_large"


def test_asgi_passes_ordinary_requests_to_django() -> None:
    result = asgi_call([(b"host", b"testserver")], [b""], method="GET")
    assert result["status"] == 401
    assert result["body"]["error"]["code"] == "not_authenticated"
