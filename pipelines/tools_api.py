"""Tool catalog endpoints of the agents' API: GET /tools, /tools/{name}, /tool-servers (list,
one, register) and POST /tool-servers/{name}/refresh. Logic lives in pipelines/services.py and selectors.py."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ordinaut_site.api import QueryParamsSerializer, error_responses
from ordinaut_site.audit import Actor
from ordinaut_site.auth import request_agent
from ordinaut_site.models import SCOPE_ADMIN, SCOPE_TOOLS_READ, SCOPE_TOOLS_WRITE

from . import selectors, services
from .models import SERVER_NAME_MAX_CHARS, SERVER_NAME_PATTERN, ToolServer
from .models import Tool as CatalogTool
from .tools import Tool

STDIO_REFUSED = (
    "only streamable_http servers are registered through the API; stdio servers are registered by "
    "operators (manage.py add_tool_server NAME --command ..., or the admin)"
)


class ToolSerializer(serializers.Serializer):
    """A tool as steps name it, from any source: built-in, Python module or MCP server."""

    name = serializers.CharField(help_text="What a step's `uses` says: `server.tool`.")
    server = serializers.CharField(help_text="`orchestrator` for built-ins; else the prefix (an MCP server's name).")
    description = serializers.CharField()
    input_schema = serializers.DictField(help_text="JSON Schema of the input (`with`); {} accepts anything.")
    output_schema = serializers.DictField(allow_null=True, help_text="JSON Schema of the output, or null.")
    cost = serializers.IntegerField(help_text="Budget cost units per call (0: not metered).")


def tool_data(tool: Tool | CatalogTool) -> dict[str, Any]:
    if isinstance(tool, CatalogTool):
        return {
            "name": tool.full_name,
            "server": tool.server.name,
            "description": tool.description,
            "input_schema": tool.input_schema or {},
            "output_schema": tool.output_schema,
            "cost": tool.cost,
        }
    return {
        "name": tool.name,
        "server": tool.server,
        "description": tool.description,
        "input_schema": tool.input_schema,
        "output_schema": tool.output_schema,
        "cost": tool.cost,
    }


class ToolListQuerySerializer(QueryParamsSerializer):
    server = serializers.CharField(required=False, max_length=200, help_text="Only this server's tools.")
    search = serializers.CharField(
        required=False, max_length=200, help_text="Case-insensitive text in the name or description."
    )


class ActorRefSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="agent, user (an operator) or system")
    id = serializers.CharField(allow_blank=True)
    name = serializers.CharField(allow_blank=True)


class ToolServerSerializer(serializers.ModelSerializer):
    """A tool server as the API shows it: variable *names* only, never a secret's value."""

    created_by = serializers.SerializerMethodField(help_text="Who registered it.")
    header_names = serializers.SerializerMethodField(help_text="The headers sent (their values are never shown).")
    tool_count = serializers.IntegerField(read_only=True, help_text="Tools found by the last successful refresh.")
    args = serializers.ListField(child=serializers.CharField(), read_only=True, help_text="stdio: the arguments.")
    headers_from_env = serializers.DictField(
        child=serializers.CharField(), read_only=True, help_text='{"Header-Name": "ENV_VAR"}: names only.'
    )
    env_from_env = serializers.DictField(
        child=serializers.CharField(), read_only=True, help_text='stdio: {"CHILD_VAR": "ENV_VAR"}: names only.'
    )

    class Meta:
        model = ToolServer
        fields = [
            "id",
            "name",
            "transport",
            "url",
            "command",
            "args",
            "headers_from_env",
            "header_names",
            "env_from_env",
            "timeout_seconds",
            "enabled",
            "tool_count",
            "protocol_version",
            "last_refreshed_at",
            "last_error",
            "last_error_at",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_header_names(self, server: ToolServer) -> list[str]:
        return sorted(server.headers_from_env or {})

    @extend_schema_field(ActorRefSerializer(allow_null=True))
    def get_created_by(self, server: ToolServer) -> dict[str, str] | None:
        return server.created_by or None


class ToolServerCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(
        SERVER_NAME_PATTERN,
        max_length=SERVER_NAME_MAX_CHARS,
        help_text="The prefix steps use (`name.tool`): lower-case letters, digits, _ and -. Not `orchestrator`.",
    )
    transport = serializers.ChoiceField(
        choices=[ToolServer.Transport.STREAMABLE_HTTP.value],
        required=False,
        default=ToolServer.Transport.STREAMABLE_HTTP.value,
        error_messages={"invalid_choice": STDIO_REFUSED},
        help_text="Only streamable_http through the API (stdio servers: operators only).",
    )
    url = serializers.RegexField(
        r"^https?://", max_length=2000, help_text="The MCP endpoint, http(s), without credentials in it."
    )
    headers_from_env = serializers.DictField(
        child=serializers.CharField(max_length=200),
        required=False,
        default=dict,
        help_text='{"Header-Name": "ENV_VAR"}: each header\'s value is read from that environment variable of '
        "Ordinaut's processes at call time; through the API the variable's name must start with "
        "ORDINAUT_TOOL_HEADER_ENV_PREFIX (default MCP_).",
    )
    timeout_seconds = serializers.FloatField(
        required=False,
        default=30.0,
        min_value=services.MIN_TIMEOUT_S,
        max_value=settings.ORDINAUT_MAX_STEP_TIMEOUT_S,
        help_text="Longest a tools/list or a tool call may take.",
    )
    enabled = serializers.BooleanField(required=False, default=True)


class RefreshSerializer(serializers.Serializer):
    server = ToolServerSerializer()
    tools = ToolSerializer(many=True, help_text="The server's tools now in the catalog.")
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField())
    skipped = serializers.ListField(
        child=serializers.CharField(), help_text="Listed tools a step could not name, with why."
    )


class ToolViewSet(viewsets.GenericViewSet):
    lookup_field = "name"
    lookup_value_regex = r"[^/]+?"
    serializer_class = ToolSerializer
    scope_map = {"list": SCOPE_TOOLS_READ, "retrieve": SCOPE_TOOLS_READ}

    @extend_schema(
        summary="Tools steps can use: built-ins, Python tools, and every enabled MCP server's catalog",
        parameters=[ToolListQuerySerializer],
        responses=ToolSerializer(many=True),
    )
    def list(self, request: Request) -> Response:
        query = ToolListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        tools = selectors.catalog_tools(
            server=query.validated_data.get("server"), search=query.validated_data.get("search")
        )
        page = self.paginate_queryset([tool_data(tool) for tool in tools])
        return self.get_paginated_response(page)

    @extend_schema(summary="One tool, by its full name (`server.tool`)", responses=ToolSerializer)
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(tool_data(selectors.catalog_tool_get(name=name)))


class ToolServerViewSet(viewsets.GenericViewSet):
    lookup_field = "name"
    # Only what a server name can be (SERVER_NAME_PATTERN): anything else is a 404 route, never a query.
    lookup_value_regex = f"[a-z0-9][a-z0-9_-]{{0,{SERVER_NAME_MAX_CHARS - 1}}}"
    serializer_class = ToolServerSerializer
    scope_map = {
        "list": SCOPE_TOOLS_READ,
        "retrieve": SCOPE_TOOLS_READ,
        # docs/mcp.md: agents register servers only with `admin` (and HTTP servers only).
        "create": SCOPE_ADMIN,
        "refresh": SCOPE_TOOLS_WRITE,
    }

    def get_queryset(self) -> Any:
        return selectors.tool_server_list()

    @extend_schema(summary="Registered MCP tool servers (variable names only, never secrets)")
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.tool_server_list())
        return self.get_paginated_response(ToolServerSerializer(page, many=True).data)

    @extend_schema(summary="One tool server")
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(ToolServerSerializer(selectors.tool_server_get(name=name)).data)

    @extend_schema(
        summary="Register a streamable HTTP MCP server (scope admin); refresh discovers its tools",
        description="No connection is made here: POST /tool-servers/{name}/refresh lists the tools (and beat "
        "refreshes every ORDINAUT_TOOL_REFRESH_INTERVAL_S). stdio servers: operators only. 409: the name is taken.",
        request=ToolServerCreateSerializer,
        responses={201: ToolServerSerializer, **error_responses(409)},
    )
    def create(self, request: Request) -> Response:
        body = ToolServerCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = services.tool_server_clean(**body.validated_data, from_api=True)
        server = services.tool_server_create(fields=fields, actor=Actor.of_agent(request_agent(request)))
        return Response(
            ToolServerSerializer(selectors.tool_server_get(name=server.name)).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        summary="List the server's tools now (MCP tools/list) and update the catalog",
        description="502 `tool_server_unreachable` when the server cannot be asked (down, timed out, refused "
        "the credentials); its tools stay as they were and the error is kept in `last_error`.",
        request=None,
        responses={200: RefreshSerializer, **error_responses(502)},
    )
    @action(detail=True, methods=["post"])
    def refresh(self, request: Request, name: str) -> Response:
        server = selectors.tool_server_get(name=name)
        result = services.tool_server_refresh(server=server, actor=Actor.of_agent(request_agent(request)))
        return Response(
            {
                "server": ToolServerSerializer(result.server).data,
                "tools": [tool_data(tool) for tool in result.tools],
                "added": result.added,
                "removed": result.removed,
                "changed": result.changed,
                "skipped": result.skipped,
            }
        )
