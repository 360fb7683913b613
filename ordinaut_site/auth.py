"""DRF authentication by agent bearer token, and the scope permission every API view uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework import authentication, exceptions, permissions
from rest_framework.request import Request

if TYPE_CHECKING:
    from rest_framework.views import APIView

from . import logs
from .models import Agent, AgentToken
from .services import token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer ord_...` -> (Agent, AgentToken)."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Agent, AgentToken] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        found = token_authenticate(parts[1])
        if found is None:
            raise exceptions.AuthenticationFailed("Invalid, expired or revoked token.")
        agent, token = found
        # The request middleware's bind() scope ends with the request, so this does not leak.
        logs.add(agent=agent.name)
        return agent, token

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="ordinaut"'


def request_agent(request: Request) -> Agent:
    """The authenticated agent of an API request (HasScope has already refused anyone else)."""
    agent = request.user
    if not isinstance(agent, Agent):
        raise exceptions.NotAuthenticated("Authentication credentials were not provided.")
    return agent


def required_scope(view: APIView, request: Request) -> str | None:
    """The scope a view needs for this request: `scope_map[action or method]`, else `required_scope`."""
    scope_map: dict[str, str] = getattr(view, "scope_map", {})
    action = getattr(view, "action", None)
    if action and action in scope_map:
        return scope_map[action]
    if request.method in scope_map:
        return scope_map[request.method]
    return getattr(view, "required_scope", None)


def view_scope(view_class: type[APIView], action: str | None = None) -> str:
    """The scope a REST view class declares for `action` (its `scope_map`), else its `required_scope`:
    the one table MCP tools read too, so a tool and its REST twin cannot need different scopes."""
    scope_map: dict[str, str] = getattr(view_class, "scope_map", {})
    scope = scope_map.get(action) if action else None
    scope = scope or getattr(view_class, "required_scope", None)
    if not scope:
        raise LookupError(f"{view_class.__name__} declares no scope for {action!r}")
    return scope


class HasScope(permissions.BasePermission):
    """Authenticated agent holding the scope the view declares (views must declare one)."""

    message = "This token lacks the scope this endpoint needs."

    def has_permission(self, request: Request, view: Any) -> bool:
        agent = request.user
        if not isinstance(agent, Agent):
            raise exceptions.NotAuthenticated("Authentication credentials were not provided.")
        if request.method == "OPTIONS":
            # DRF would answer OPTIONS with metadata (serializer fields) after this check alone, for
            # any token whatever the route's scope. The API is described by /openapi.json instead.
            raise exceptions.MethodNotAllowed(request.method)
        scope = required_scope(view, request)
        if scope is None:
            return True
        if not agent.has_scope(scope):
            self.message = f"This token lacks the scope {scope!r} this endpoint needs."
            return False
        return True
