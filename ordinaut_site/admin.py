"""Admin for agents, their tokens (issue and revoke) and the read-only audit log."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.safestring import SafeString

from . import audit, services
from .admin_display import OrdinautModelAdmin, RecordAdmin, json_field, when
from .models import Agent, AgentToken, AgentUsage, AuditLog

# The page itself is the width operators have (1,280 px screens): no navigation sidebar beside it
# (the breadcrumbs and the index lead everywhere), so lists and their filters fit.
admin.site.enable_nav_sidebar = False


class AgentTokenInline(admin.TabularInline):
    model = AgentToken
    extra = 0
    can_delete = False
    fields = ["prefix", "label", "created_at", "last_used_at", "expires_at", "revoked_at"]
    readonly_fields = ["prefix", "label", "created_at", "last_used_at", "expires_at", "revoked_at"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # tokens are issued by the "Issue a new token" action, which shows it once


@admin.register(Agent)
class AgentAdmin(OrdinautModelAdmin):
    list_display = ["name", "is_active", "scope_list", "contact", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "contact"]
    readonly_fields = ["id", "created_at", "deactivated_at"]
    inlines = [AgentTokenInline]
    actions = ["issue_token", "deactivate"]

    @admin.display(description="scopes")
    def scope_list(self, agent: Agent) -> str:
        return ", ".join(agent.scopes)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deactivate instead: tasks and audit entries keep their owner

    def save_model(self, request: HttpRequest, obj: Agent, form: Any, change: bool) -> None:
        actor = audit.Actor.of_user(request.user)
        if not change:
            # The same service as POST /agents and `manage.py create_agent` (scopes cleaned, audited);
            # the form's instance becomes the created row, so the admin's redirect finds it.
            created = services.agent_create(name=obj.name, scopes=obj.scopes or [], contact=obj.contact, actor=actor)
            rest = [name for name in form.changed_data if name not in ("name", "scopes", "contact", "is_active")]
            if rest:  # the budgets, say: an update of the new agent, audited as such
                for name in rest:
                    setattr(created, name, getattr(obj, name))
                services.agent_update(agent=created, actor=actor, fields=rest)
            if not obj.is_active:
                services.agent_deactivate(agent=created, actor=actor)
                created.refresh_from_db()
            obj.__dict__.update(
                {field.attname: getattr(created, field.attname) for field in Agent._meta.concrete_fields}
            )
            obj._state.adding = False
            return
        # Switching is_active goes through the services, which set deactivated_at (and pause or
        # resume the agent's tasks) and write their own audit rows; the other fields are an update.
        services.agent_update(
            agent=obj, actor=actor, fields=[name for name in form.changed_data if name != "is_active"]
        )
        if "is_active" in form.changed_data:
            if obj.is_active:
                services.agent_reactivate(agent=obj, actor=actor)
            else:
                services.agent_deactivate(agent=obj, actor=actor)
        obj.refresh_from_db()

    @admin.action(description="Issue a new token (shown once)")
    def issue_token(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            _, raw = services.token_issue(agent=agent, actor=audit.Actor.of_user(request.user))
            messages.warning(request, f"New token for {agent.name} (copy it now, it is not shown again): {raw}")

    @admin.action(description="Deactivate (tokens stop working)")
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            services.agent_deactivate(agent=agent, actor=audit.Actor.of_user(request.user))


TOKEN_SCOPES = json_field("scopes")


@admin.register(AgentToken)
class AgentTokenAdmin(OrdinautModelAdmin):
    list_display = ["prefix", "agent", "label", "created_at", "last_used_at", "expires_at", "revoked_at"]
    list_filter = ["revoked_at"]
    search_fields = ["prefix", "agent__name"]
    # Scopes are fixed at issue (narrow by issuing another token); label and expiry may change,
    # through token_update, which audits them.
    readonly_fields = ["agent", "prefix", TOKEN_SCOPES, "created_at", "last_used_at", "revoked_at"]
    fields = ["agent", "prefix", "label", TOKEN_SCOPES, "created_at", "last_used_at", "expires_at", "revoked_at"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: AgentToken, form: Any, change: bool) -> None:
        services.token_update(
            token=obj,
            actor=audit.Actor.of_user(request.user),
            label=form.cleaned_data["label"],
            expires_at=form.cleaned_data["expires_at"],
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[AgentToken]) -> None:
        for token in queryset:
            services.token_revoke(token=token, actor=audit.Actor.of_user(request.user))


@admin.register(AuditLog)
class AuditLogAdmin(RecordAdmin):
    list_display = ["moment", "actor_kind", "actor_name", "action", "subject_type", "subject_id", "request_id"]
    list_filter = ["actor_kind", ("at", admin.DateFieldListFilter), "subject_type", "action"]
    search_fields = ["actor_name", "subject_id", "request_id", "action"]
    fields = [
        "moment",
        "actor_kind",
        "actor_id",
        "actor_name",
        "action",
        "subject_type",
        "subject_id",
        json_field("details"),
        "request_id",
    ]

    @admin.display(description="at", ordering="at")
    def moment(self, row: AuditLog) -> SafeString | str:
        return when(row.at)


@admin.register(AgentUsage)
class AgentUsageAdmin(RecordAdmin):
    """Budget counters per agent and UTC day (read-only: the engine writes them)."""

    list_display = ["day", "agent", "tool_calls", "cost_units", "rejected"]
    list_filter = ["day"]
    search_fields = ["agent__name"]
    list_select_related = ["agent"]
