"""How the admin shows values: JSON folded and pretty-printed, always escaped; counts, durations
and ages in words operators read."""

from __future__ import annotations

import json
from datetime import timedelta

from django.utils import timezone

from ordinaut_site.admin_display import (
    JSON_SHOWN_MAX_CHARS,
    JSONEditWidget,
    PrettyJSONFormField,
    age_text,
    counts_text,
    duration_text,
    json_block,
    json_summary,
    plural,
)


def test_an_object_is_a_closed_details_with_its_compact_form_as_summary_and_indented_body() -> None:
    html = str(json_block({"kind": "user", "id": 3, "name": "operator"}))

    assert html.startswith('<details class="json"><summary>')
    assert " open" not in html
    assert (
        "<summary>{&quot;kind&quot;: &quot;user&quot;, &quot;id&quot;: 3, &quot;name&quot;: &quot;operator&quot;}"
        in html
    )
    assert "<pre>{\n  &quot;kind&quot;: &quot;user&quot;,\n  &quot;id&quot;: 3," in html


def test_markup_in_values_and_keys_is_escaped_everywhere() -> None:
    value = {"<b>key</b>": "<script>alert(1)</script>", "list": ["<img src=x onerror=alert(2)>"]}

    html = str(json_block(value, label="<i>input</i>"))

    assert "<script>" not in html
    assert "<img" not in html
    assert "<b>key" not in html
    assert "<i>input" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;key&lt;/b&gt;" in html


def test_nothing_scalars_and_empty_values_are_shown_inline() -> None:
    assert json_block(None) == "-"
    assert str(json_block(42)) == '<code class="json">42</code>'
    assert str(json_block("<x>")) == '<code class="json">&quot;&lt;x&gt;&quot;</code>'
    assert str(json_block([])) == '<code class="json">[]</code>'


def test_a_long_summary_is_cut_and_says_how_many_items_or_keys() -> None:
    assert json_summary(list(range(100))).endswith("… (100 items)")
    assert json_summary([{"text": "x" * 100}]).endswith("… (1 item)")
    assert json_summary({"text": "x" * 100}).endswith("… (1 key)")


def test_a_huge_value_is_cut_in_the_page_saying_so() -> None:
    html = str(json_block({"text": "y" * (JSON_SHOWN_MAX_CHARS * 2)}))

    assert len(html) < JSON_SHOWN_MAX_CHARS + 1000
    assert "more characters, cut here)" in html


def test_an_editable_json_value_is_pretty_printed_in_a_textarea_as_tall_as_it_is() -> None:
    field = PrettyJSONFormField()
    value = {"pipeline": [{"id": "a", "uses": "orchestrator.echo"}]}

    html = str(JSONEditWidget().render("payload", field.prepare_value(value)))

    assert '<details class="json json-edit">' in html
    assert 'rows="8"' in html
    assert json.dumps(value, indent=2).replace('"', "&quot;") in html


def test_text_that_is_not_json_opens_its_editor_to_be_corrected() -> None:
    typed = PrettyJSONFormField().bound_data("{oops", None)

    html = str(JSONEditWidget().render("payload", typed))

    assert '<details class="json json-edit" open>' in html
    assert "not valid JSON" in html
    assert "{oops</textarea>" in html


def test_counts_durations_and_ages_in_words() -> None:
    assert [plural(1, "item"), plural(2, "item"), plural(0, "approval")] == ["1 item", "2 items", "0 approvals"]
    assert (
        counts_text({"failed": 2, "succeeded": 18, "skipped": 0}, ["succeeded", "failed"]) == "18 succeeded, 2 failed"
    )
    assert [duration_text(ms) for ms in (None, 12, 1234, 61_000, 3_725_000)] == [
        "-",
        "12 ms",
        "1.2 s",
        "1 min 1 s",
        "1 h 2 min",
    ]
    now = timezone.now()
    ages = [age_text(now - timedelta(seconds=s), now=now) for s in (5, 125, 7200, 3 * 86400 + 5)]
    assert ages == ["5 s", "2 min", "2 h", "3 d"]
