"""Admin for the tool catalog: tool servers (add, change, refresh; variable names only, no secrets)
and their tools (read-only but for the budget cost). Every write goes through pipelines/services.py."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from ordinaut_site.admin_display import OrdinautModelAdmin, json_field, plural
from ordinaut_site.audit import Actor
from ordinaut_site.errors import OrdinautError, ValidationFailed

from . import selectors, services
from .models import Tool, ToolServer

EDITABLE = [
    "name",
    "transport",
    "url",
    "command",
    "args",
    "headers_from_env",
    "env_from_env",
    "timeout_seconds",
    "enabled",
]
LAST_ERROR_LIST_CHARS = 80


class ToolServerAdminForm(forms.ModelForm):
    class Meta:
        model = ToolServer
        fields = EDITABLE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        given: dict[str, Any] = {name: data.get(name) for name in EDITABLE if name in data}
        try:
            self.server_fields = services.tool_server_clean(**given)
        except ValidationFailed as exc:
            for name, problems in exc.fields.items():
                self.add_error(name if name in self.fields else None, "; ".join(problems))
        return data


@admin.register(ToolServer)
class ToolServerAdmin(OrdinautModelAdmin):
    form = ToolServerAdminForm
    list_display = ["name", "transport", "target", "enabled", "tool_count", "last_refreshed_at", "refresh_error"]
    list_filter = ["transport", "enabled"]
    search_fields = ["name", "url", "command"]
    readonly_fields = [
        "id",
        json_field("created_by"),
        "created_at",
        "last_refreshed_at",
        "last_error",
        "last_error_at",
        "protocol_version",
        "tool_list",
    ]
    actions = ["refresh"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ToolServer]:
        return selectors.tool_server_list()

    @admin.display(description="url or command")
    def target(self, server: ToolServer) -> str:
        if server.transport == ToolServer.Transport.STDIO:
            return " ".join([server.command, *server.args])
        return server.url

    @admin.display(description="tools", ordering="tool_count")
    def tool_count(self, server: ToolServer) -> int:
        return int(getattr(server, "tool_count", 0))

    @admin.display(description="tools (last refresh)")
    def tool_list(self, server: ToolServer) -> str:
        tools = Tool.objects.filter(server=server).order_by("name")
        if not tools:
            return "-"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a> (cost {}): {}</li>',
                (
                    (
                        reverse("admin:pipelines_tool_change", args=[tool.pk]),
                        tool.full_name,
                        tool.cost,
                        tool.description,
                    )
                    for tool in tools
                ),
            ),
        )

    @admin.display(description="last refresh error")
    def refresh_error(self, server: ToolServer) -> str:
        error = server.last_error or ""
        return error if len(error) <= LAST_ERROR_LIST_CHARS else error[: LAST_ERROR_LIST_CHARS - 1] + "…"

    def save_model(self, request: HttpRequest, obj: ToolServer, form: Any, change: bool) -> None:
        actor = Actor.of_user(request.user)
        if change:
            original = ToolServer.objects.get(pk=obj.pk)
            services.tool_server_update(server=original, fields=form.server_fields, actor=actor)
            return
        created = services.tool_server_create(fields=form.server_fields, actor=actor)
        obj.pk = created.pk
        try:
            result = services.tool_server_refresh(server=created, actor=actor)
        except OrdinautError as exc:
            messages.warning(request, f"{created.name}: registered, but {exc.message}")
        else:
            messages.info(request, f"{created.name}: {plural(len(result.tools), 'tool')} found.")

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> Any:
        # A server's tools go with it; they are not deletable on their own (ToolAdmin), so Django
        # would otherwise refuse the whole deletion for want of that permission.
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        perms_needed.discard(Tool._meta.verbose_name)
        return deleted, counts, perms_needed, protected

    def delete_model(self, request: HttpRequest, obj: ToolServer) -> None:
        services.tool_server_delete(server=obj, actor=Actor.of_user(request.user))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ToolServer]) -> None:
        for server in queryset:
            services.tool_server_delete(server=server, actor=Actor.of_user(request.user))

    @admin.action(description="Refresh the tools (tools/list)")
    def refresh(self, request: HttpRequest, queryset: QuerySet[ToolServer]) -> None:
        actor = Actor.of_user(request.user)
        for server in queryset:
            try:
                result = services.tool_server_refresh(server=server, actor=actor)
            except OrdinautError as exc:
                messages.error(request, exc.message)
            else:
                summary = (
                    f"{plural(len(result.tools), 'tool')}; added {len(result.added)}, removed {len(result.removed)}"
                )
                messages.success(request, f"{server.name}: {summary}, changed {len(result.changed)}.")


class ToolCostForm(forms.ModelForm):
    class Meta:
        model = Tool
        fields = ["cost"]


TOOL_INPUT, TOOL_OUTPUT = json_field("input_schema"), json_field("output_schema")


@admin.register(Tool)
class ToolAdmin(OrdinautModelAdmin):
    """What servers report is read-only; only the budget cost is Ordinaut's to set."""

    form = ToolCostForm
    list_display = ["full_name", "server", "cost", "updated_at"]
    list_filter = ["server"]
    search_fields = ["name", "description", "server__name"]
    list_select_related = ["server"]
    readonly_fields = ["server", "name", "description", TOOL_INPUT, TOOL_OUTPUT, "created_at", "updated_at"]
    fields = ["server", "name", "description", "cost", TOOL_INPUT, TOOL_OUTPUT, "created_at", "updated_at"]

    @admin.display(description="uses", ordering="name")
    def full_name(self, tool: Tool) -> str:
        return tool.full_name

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Tool, form: Any, change: bool) -> None:
        original = Tool.objects.select_related("server").get(pk=obj.pk)
        services.tool_set_cost(tool=original, cost=int(form.cleaned_data["cost"]), actor=Actor.of_user(request.user))
