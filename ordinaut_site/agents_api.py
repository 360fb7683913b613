"""Agent and token endpoints of the agents' API: serializers and views (logic lives in services)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from . import selectors, services
from .api import UUID_LOOKUP, error_responses
from .audit import Actor
from .auth import request_agent
from .budgets import budget_usage
from .models import ALL_SCOPES, SCOPE_AGENTS_ADMIN, Agent, AgentToken

TOKEN_PREFIX_LOOKUP = "[a-z0-9]{1,16}"  # noqa: S105 - a URL pattern, not a secret


class AgentSerializer(serializers.ModelSerializer):
    class Meta:
        model = Agent
        fields = ["id", "name", "scopes", "contact", "is_active", "created_at", "deactivated_at"]
        read_only_fields = fields


class AgentCreateSerializer(serializers.Serializer):
    name = serializers.CharField(min_length=1, max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ALL_SCOPES), allow_empty=True, max_length=len(ALL_SCOPES)
    )
    contact = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class TokenSerializer(serializers.ModelSerializer):
    """A token as listed: its public prefix and dates, never the secret or its hash."""

    active = serializers.SerializerMethodField()

    class Meta:
        model = AgentToken
        fields = ["prefix", "label", "scopes", "created_at", "last_used_at", "expires_at", "revoked_at", "active"]
        read_only_fields = fields

    def get_active(self, token: AgentToken) -> bool:
        return token.is_usable()


class TokenCreateSerializer(serializers.Serializer):
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=ALL_SCOPES),
        required=False,
        default=list,
        max_length=len(ALL_SCOPES),
        help_text="Narrow the token to some of the agent's scopes; empty: all of them, or all your own token "
        "holds if it holds fewer. Never a scope your token lacks (403).",
    )
    label = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")  # type: ignore[assignment]


class NewTokenSerializer(TokenSerializer):
    """A token just issued: the only time the secret is shown."""

    token = serializers.SerializerMethodField(help_text="The bearer token. Shown once; store it now.")

    class Meta(TokenSerializer.Meta):
        fields = ["token", *TokenSerializer.Meta.fields]
        read_only_fields = fields

    def get_token(self, token: AgentToken) -> str:
        return str(self.context["raw_token"])


class AgentCreatedSerializer(serializers.Serializer):
    agent = AgentSerializer()
    token = serializers.CharField(help_text="The new agent's bearer token. Shown once; store it now.")
    prefix = serializers.CharField(help_text="The token's public prefix (for listing and revoking).")


class BudgetCounterSerializer(serializers.Serializer):
    used = serializers.IntegerField()
    limit = serializers.IntegerField(allow_null=True, help_text="null: no limit.")


class BudgetSerializer(serializers.Serializer):
    day = serializers.DateField(help_text="The UTC day the counters are for.")
    tool_calls = BudgetCounterSerializer()
    cost_units = BudgetCounterSerializer()
    rejected = serializers.IntegerField(help_text="Calls refused today because the budget was spent.")


class AgentMeSerializer(AgentSerializer):
    token = serializers.SerializerMethodField(help_text="The token this request authenticated with.")
    budget = serializers.SerializerMethodField(help_text="Today's metered tool calls and cost units.")

    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "token", "budget"]
        read_only_fields = fields

    @extend_schema_field(BudgetSerializer)
    def get_budget(self, agent: Agent) -> dict[str, Any]:
        return budget_usage(agent=agent)

    @extend_schema_field(TokenSerializer(allow_null=True))
    def get_token(self, agent: Agent) -> dict[str, Any] | None:
        token = self.context.get("token")
        return TokenSerializer(token).data if isinstance(token, AgentToken) else None


# Agents and their tokens. Every operation but GET /agents/me needs agents:admin.
class AgentViewSet(viewsets.GenericViewSet):
    lookup_value_regex = UUID_LOOKUP
    serializer_class = AgentSerializer
    scope_map = {
        "list": SCOPE_AGENTS_ADMIN,
        "create": SCOPE_AGENTS_ADMIN,
        "retrieve": SCOPE_AGENTS_ADMIN,
        "destroy": SCOPE_AGENTS_ADMIN,
        "tokens": SCOPE_AGENTS_ADMIN,
        "revoke_token": SCOPE_AGENTS_ADMIN,
    }  # "me": any authenticated agent

    def get_queryset(self) -> Any:
        return selectors.agent_list()

    def get_object(self) -> Agent:
        return selectors.agent_get(agent_id=self.kwargs["pk"])

    @extend_schema(summary="The calling agent", responses={200: AgentMeSerializer})
    @action(detail=False, methods=["get"], url_path="me")
    def me(self, request: Request) -> Response:
        return Response(AgentMeSerializer(request_agent(request), context={"token": request.auth}).data)

    @extend_schema(summary="List agents (newest first)")
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.agent_list())
        return self.get_paginated_response(AgentSerializer(page, many=True).data)

    @extend_schema(
        summary="Create an agent and its first token",
        description="Grant only scopes you hold yourself (only an admin grants `admin`). "
        "The token is in this response only.",
        request=AgentCreateSerializer,
        responses={201: AgentCreatedSerializer, **error_responses(409)},
    )
    def create(self, request: Request) -> Response:
        body = AgentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        caller = request_agent(request)
        actor = Actor.of_agent(caller)
        agent = services.agent_create(
            name=body.validated_data["name"],
            scopes=body.validated_data["scopes"],
            contact=body.validated_data["contact"],
            actor=actor,
            by_agent=caller,
        )
        token, raw = services.token_issue(agent=agent, actor=actor, label="created with the agent")
        data = {"agent": AgentSerializer(agent).data, "token": raw, "prefix": token.prefix}
        return Response(data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="One agent")
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(AgentSerializer(self.get_object()).data)

    @extend_schema(
        summary="Deactivate an agent",
        description="Agents are never erased: the agent stops authenticating; its tasks, runs and audit trail stay.",
        responses={204: None},
    )
    def destroy(self, request: Request, pk: str) -> Response:
        caller = request_agent(request)
        services.agent_deactivate(agent=self.get_object(), actor=Actor.of_agent(caller), by_agent=caller)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        methods=["GET"], summary="An agent's tokens (prefixes only)", responses={200: TokenSerializer(many=True)}
    )
    @extend_schema(
        methods=["POST"],
        summary="Issue a token",
        request=TokenCreateSerializer,
        responses={201: NewTokenSerializer, **error_responses(409)},
    )
    @action(detail=True, methods=["get", "post"], url_path="tokens")
    def tokens(self, request: Request, pk: str) -> Response:
        agent = self.get_object()
        if request.method == "GET":
            page = self.paginate_queryset(selectors.token_list(agent=agent))
            return self.get_paginated_response(TokenSerializer(page, many=True).data)
        body = TokenCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        caller = request_agent(request)
        token, raw = services.token_issue(
            agent=agent,
            actor=Actor.of_agent(caller),
            expires_at=body.validated_data["expires_at"],
            label=body.validated_data["label"],
            by_agent=caller,
            scopes=body.validated_data["scopes"],
        )
        return Response(NewTokenSerializer(token, context={"raw_token": raw}).data, status=status.HTTP_201_CREATED)

    @extend_schema(summary="Revoke a token", responses={204: OpenApiResponse(description="Revoked (or already was).")})
    @action(detail=True, methods=["delete"], url_path=f"tokens/(?P<prefix>{TOKEN_PREFIX_LOOKUP})")
    def revoke_token(self, request: Request, pk: str, prefix: str) -> Response:
        token = selectors.token_get(agent=self.get_object(), prefix=prefix)
        caller = request_agent(request)
        services.token_revoke(token=token, actor=Actor.of_agent(caller), by_agent=caller)
        return Response(status=status.HTTP_204_NO_CONTENT)
