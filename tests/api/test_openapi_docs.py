"""/openapi.json (no auth) describes the real API, errors and bearer scheme; /docs works offline."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import path
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.utils import extend_schema
from drf_spectacular.validation import validate_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ordinaut_site.idempotency import idempotent

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    response = Client().get("/openapi.json")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    return dict(response.json())


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items()]


def test_schema_is_valid_openapi(schema: dict[str, Any]) -> None:
    validate_schema(schema)
    assert schema["openapi"].startswith("3.")


def test_schema_needs_no_token_and_ignores_a_bad_one() -> None:
    assert Client().get("/openapi.json", HTTP_AUTHORIZATION="Bearer nonsense").status_code == 200


# docs/api.md: a trailing slash is accepted too, on the routes outside the API as on the API's own.
@pytest.mark.parametrize(
    ("url", "content_type"),
    [("/openapi.json", "application/json"), ("/docs", "text/html"), ("/metrics", "text/plain")],
)
def test_public_pages_answer_with_and_without_a_trailing_slash(url: str, content_type: str) -> None:
    for spelling in (url, f"{url}/"):
        response = Client().get(spelling)
        assert response.status_code == 200, spelling
        assert response["Content-Type"].startswith(content_type), spelling


def test_schema_lists_the_api_paths_without_trailing_slashes(schema: dict[str, Any]) -> None:
    for expected in ("/agents", "/agents/me", "/agents/{id}", "/agents/{id}/tokens", "/agents/{id}/tokens/{prefix}"):
        assert expected in schema["paths"], expected
    assert "/audit" in schema["paths"]
    assert "/tasks" in schema["paths"]
    assert not [p for p in schema["paths"] if p.endswith("/")]


def test_bearer_scheme_is_described_and_required(schema: dict[str, Any]) -> None:
    scheme = schema["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path_, method, op in operations(schema):
        assert op.get("security") == [{"bearerAuth": []}], (path_, method)


def test_every_operation_documents_errors_in_the_one_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "request_id"}
    for path_, method, op in operations(schema):
        for status in ("400", "401", "403", "429", "500"):
            content = op["responses"][status]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/Error"}, (path_, method, status)
        if method in ("post", "put", "patch"):
            assert {"413", "415"} <= set(op["responses"]), (path_, method)
        retry_after = op["responses"]["429"]["headers"]["Retry-After"]
        assert retry_after == {"$ref": "#/components/headers/RetryAfter"}


def test_agent_schemas_match_the_responses(schema: dict[str, Any], make_agent: Any) -> None:
    admin = make_agent(admin=True)
    created = admin.client.post("/agents", {"name": "described", "scopes": ["tasks:read"]}).json()
    documented = schema["components"]["schemas"]["AgentCreated"]["properties"]
    assert set(created) == set(documented)
    me = admin.client.get("/agents/me").json()
    assert set(me) == set(schema["components"]["schemas"]["AgentMe"]["properties"])


class _ThingSerializer(serializers.Serializer):
    id = serializers.UUIDField()


class _IdempotentView(APIView):
    required_scope = "tasks:write"

    @extend_schema(request=_ThingSerializer, responses={201: _ThingSerializer})
    @idempotent
    def post(self, request: Request) -> Response:
        return Response({}, status=201)


def test_idempotent_views_document_the_header_the_replay_and_409() -> None:
    generator = SchemaGenerator(patterns=[path("things", _IdempotentView.as_view())])
    op = generator.get_schema(request=None, public=True)["paths"]["/things"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in op["parameters"]]
    assert {"200", "201", "409"} <= set(op["responses"])
    assert "Idempotent-Replayed" in op["responses"]["200"]["headers"]


def test_docs_page_references_no_external_host() -> None:
    response = Client().get("/docs")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "http://" not in html
    assert "https://" not in html
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    assert urls, "the page loads its assets"
    for url in urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
    assert "/openapi.json" in html


def test_docs_assets_are_served_by_this_server() -> None:
    html = Client().get("/docs").content.decode()
    for url in re.findall(r"""(?:src|href)=["']([^"']+)["']""", html):
        response = Client().get(url)
        assert response.status_code == 200, url
