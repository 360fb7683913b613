"""OpenAPI (drf-spectacular): the bearer scheme, the error shape on every operation, Idempotency-Key."""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import permissions

from .api import ERROR_DESCRIPTIONS, ErrorSerializer
from .idempotency import IDEMPOTENCY_HEADER, REPLAYED_HEADER
from .middleware import REQUEST_ID_HEADER

_BODY_METHODS = {"POST", "PUT", "PATCH"}

REQUEST_ID_PARAMETERS = [
    OpenApiParameter(
        REQUEST_ID_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        description="Echoed when short and plain ([A-Za-z0-9._:-]{1,128}); otherwise a new id. In every log line.",
    ),
    OpenApiParameter(
        REQUEST_ID_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=True,
        required=True,
        description="The request id (also in error bodies).",
    ),
    OpenApiParameter(
        "Retry-After",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        required=True,
        description="Seconds until the rate limit window ends.",
    ),
]

IDEMPOTENCY_PARAMETERS = [
    OpenApiParameter(
        IDEMPOTENCY_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        pattern=r"^[\x21-\x7e]{1,255}$",
        description="Repeat with the same body: the first response again (200). With another body: 409. "
        "Remembered per agent and endpoint for ORDINAUT_IDEMPOTENCY_TTL_S (default 24 h).",
    ),
    OpenApiParameter(
        REPLAYED_HEADER,
        OpenApiTypes.STR,
        OpenApiParameter.HEADER,
        response=[200],
        enum=["true"],
        description="Present on a replayed response.",
    ),
]


class BearerTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "ordinaut_site.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "ord_<prefix>_<secret>",
            "description": "An agent token: `Authorization: Bearer ord_...` (manage.py create_agent, POST /agents).",
        }


class AutoSchema(openapi.AutoSchema):
    """Adds what every Ordinaut operation shares: error responses in the one shape, the request id
    header, and for `@idempotent` views the Idempotency-Key header and the 200 replay."""

    def _view_method(self) -> Any:
        name = getattr(self.view, "action", None) or self.method.lower()
        return getattr(self.view, name, None)

    def is_idempotent(self) -> bool:
        return bool(getattr(self._view_method(), "idempotent", False))

    def is_public(self) -> bool:
        return any(isinstance(p, permissions.AllowAny) for p in self.view.get_permissions())

    def get_override_parameters(self) -> list[Any]:
        parameters = [*super().get_override_parameters(), *REQUEST_ID_PARAMETERS]
        if self.is_idempotent():
            parameters += IDEMPOTENCY_PARAMETERS
        return parameters

    def error_statuses(self) -> list[int]:
        statuses = [400]
        if not self.is_public():
            statuses += [401, 403]
        if "{" in self.path:
            statuses.append(404)
        if self.method in _BODY_METHODS:
            statuses += [413, 415]
        if self.is_idempotent():
            statuses.append(409)
        return [*statuses, 429, 500]

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        responses = super()._get_response_bodies(direction)
        if self.is_idempotent():
            success = next((code for code in ("201", "202") if code in responses), None)
            if success and "200" not in responses:
                replay = {**responses[success], "description": "Replay of the first response (same Idempotency-Key)."}
                replay["headers"] = self._get_response_headers_for_code("200", direction)
                responses["200"] = replay
        for status in self.error_statuses():
            code = str(status)
            if code not in responses:
                error = OpenApiResponse(response=ErrorSerializer, description=ERROR_DESCRIPTIONS[status])
                responses[code] = self._get_response_for_code(error, code, direction=direction)
        return dict(sorted(responses.items()))


def strip_trailing_slashes(endpoints: list[tuple[Any, ...]], **kwargs: Any) -> list[tuple[Any, ...]]:
    """Preprocessing hook: document "/tasks/{id}" as docs/api.md writes it (the router also accepts "/")."""
    return [(path.rstrip("/") or "/", *rest) for path, *rest in endpoints]


def shared_headers(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: the response headers every operation repeats become components/headers refs."""
    shared: dict[str, Any] = result.setdefault("components", {}).setdefault("headers", {})
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                for name, header in response.get("headers", {}).items():
                    component = name.replace("-", "")
                    shared.setdefault(component, header)
                    if shared[component] == header:
                        response["headers"][name] = {"$ref": f"#/components/headers/{component}"}
    return result


# Query parameters that refuse an empty value: the pagination bounds (a bad limit/offset is a 400).
NON_EMPTY_QUERY_PARAMETERS = {"limit", "offset"}


def empty_query_values(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: `?status=` means no status filter (DRF query serializers and django-filter
    both read an empty optional value as absent), so optional query parameters say allowEmptyValue."""
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if (
                    parameter.get("in") == "query"
                    and not parameter.get("required")
                    and parameter.get("name") not in NON_EMPTY_QUERY_PARAMETERS
                ):
                    parameter["allowEmptyValue"] = True
    return result
