"""How the admin shows things to operators: JSON pretty-printed and collapsible, compact times,
durations, ages and counts, and the base admin classes (records are read-only; lists skip the
count of a whole large table)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin import helpers
from django.contrib.admin.views.main import ChangeList
from django.db import models
from django.db.models import QuerySet
from django.forms.fields import InvalidJSONInput
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext

ADMIN_CSS = "ordinaut/admin.css"
# A JSON value longer than this (pretty-printed) is cut in the page; the API returns it whole.
JSON_SHOWN_MAX_CHARS = 50_000
# The summary line of a collapsed JSON value: its compact form, cut to this.
JSON_SUMMARY_CHARS = 70
# An editable JSON value gets a textarea of its lines, between these.
JSON_EDIT_MIN_ROWS = 3
JSON_EDIT_MAX_ROWS = 30
EMPTY = "-"


def json_text(value: Any) -> str:
    """The value as operators read it: two-space indents, non-ASCII left as it is."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def json_summary(value: Any) -> str:
    compact = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    if len(compact) <= JSON_SUMMARY_CHARS:
        return compact
    cut = compact[: JSON_SUMMARY_CHARS - 1] + "…"
    if isinstance(value, dict):
        return f"{cut} ({plural(len(value), 'key')})"
    if isinstance(value, list):
        return f"{cut} ({plural(len(value), 'item')})"
    return cut


def json_block(value: Any, *, label: str = "") -> SafeString | str:
    """A JSON value as a closed <details>: its summary is the compact value (cut), opening it shows
    it pretty-printed. Scalars and empty lists or objects are shown inline. Everything escaped."""
    if value is None:
        return EMPTY
    if not isinstance(value, dict | list) or not value:
        return format_html('<code class="json">{}</code>', json.dumps(value, ensure_ascii=False, default=str))
    text = json_text(value)
    if len(text) > JSON_SHOWN_MAX_CHARS:
        text = f"{text[:JSON_SHOWN_MAX_CHARS]}\n… ({len(text) - JSON_SHOWN_MAX_CHARS} more characters, cut here)"
    return format_html(
        '<details class="json"><summary>{}{}</summary><pre>{}</pre></details>',
        format_html("<b>{}</b> ", label) if label else "",
        json_summary(value),
        text,
    )


def json_field(name: str, *, description: str | None = None) -> Any:
    """A read-only admin field (for readonly_fields and fieldsets) showing the model's JSON field
    `name` with json_block. It bears the field's name, so the admin finds the field's help text
    and gives the row the usual field-<name> class. (Typed Any: django-stubs types fieldsets as
    names only, though the admin takes readonly_fields' callables there too.)"""

    def show(obj: Any) -> SafeString | str:
        return json_block(getattr(obj, name))

    show.__name__ = name
    return admin.display(description=description or name.replace("_", " "))(show)


class JSONEditWidget(forms.Textarea):
    """An editable JSON value, pretty-printed in a textarea as tall as its lines, inside a closed
    <details> whose summary is the compact value (open when the text given is not valid JSON)."""

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"class": "json-edit", "cols": 100, **(attrs or {})})

    def format_value(self, value: Any) -> str | None:
        if value is None or isinstance(value, InvalidJSONInput):
            return value
        try:
            return json_text(json.loads(value))  # the form field gives the value as compact JSON text
        except (TypeError, ValueError):
            return str(value)

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> SafeString:
        text = self.format_value(value) or ""
        lines = text.count("\n") + 1
        attrs = {**(attrs or {}), "rows": min(max(lines, JSON_EDIT_MIN_ROWS), JSON_EDIT_MAX_ROWS)}
        textarea = super().render(name, value, attrs, renderer)
        try:
            summary = json_summary(json.loads(text)) if text else EMPTY
            is_open = False
        except ValueError:
            summary, is_open = "not valid JSON", True
        return format_html(
            '<details class="json json-edit"{}><summary>{}</summary>{}</details>',
            " open" if is_open else "",
            summary,
            textarea,
        )


class PrettyJSONFormField(forms.JSONField):
    widget = JSONEditWidget


def moment_text(value: datetime) -> str:
    """A moment in the server's time zone, to the second: "2025-06-01 09:00:03"."""
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S}"


def when(value: datetime | None) -> SafeString | str:
    """moment_text in a <time>, the full ISO time with its offset on hover."""
    if value is None:
        return EMPTY
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        timezone.localtime(value).isoformat(),
        moment_text(value),
    )


def duration_text(ms: float | None) -> str:
    if ms is None:
        return EMPTY
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def age_text(since: datetime, *, now: datetime | None = None) -> str:
    """How long ago, in the largest whole unit: "45 s", "12 min", "3 h", "2 d"."""
    seconds = max(0, int(((now or timezone.now()) - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """ "1 item", "2 items" (never "item(s)")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def counts_text(counts: Mapping[str, int], order: Iterable[str] = ()) -> str:
    """ "18 succeeded, 2 failed": the non-zero counts, in `order` first."""
    keys = [*order, *(key for key in counts if key not in order)]
    return ", ".join(f"{counts[key]} {key}" for key in keys if counts.get(key))


class OrdinautModelAdmin(admin.ModelAdmin):
    """Ordinaut's admin pages: the stylesheet (JSON blocks, compact lists and the step timeline)
    and editable JSON fields pretty-printed."""

    formfield_overrides = {models.JSONField: {"form_class": PrettyJSONFormField}}

    class Media:
        css = {"all": [ADMIN_CSS]}


class LightChangeList(ChangeList):
    """A list that leaves its admin's `list_defer` columns unloaded: large JSON no column shows
    (a run copies its task's whole pipeline) is not read for each row of each page."""

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> QuerySet[Any]:
        return super().get_queryset(request, exclude_parameters).defer(*getattr(self.model_admin, "list_defer", ()))


class RecordAdmin(OrdinautModelAdmin):
    """A record operators read, never edit here: no add, change (so no Save buttons) or delete;
    actions still act, through the services. Lists skip counting the whole table on each page
    (records grow to hundreds of thousands of rows; a filtered list still shows its count) and
    leave `list_defer` unloaded."""

    show_full_result_count = False
    # No "Show counts" either: it counts every filter choice over the whole table.
    show_facets = admin.ShowFacets.NEVER
    list_defer: tuple[str, ...] = ()

    def record_label(self, obj: Any) -> str:
        """How operators name a row (its __str__ may be ids): in the list's checkbox label."""
        return str(obj)

    def action_checkbox(self, obj: Any) -> SafeString:
        # Django's, labelled with record_label instead of __str__.
        label = format_html(gettext("Select this object for an action - {}"), self.record_label(obj))
        checkbox = forms.CheckboxInput({"class": "action-select", "aria-label": label}, lambda value: False)
        return checkbox.render(helpers.ACTION_CHECKBOX_NAME, str(obj.pk))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return LightChangeList

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
