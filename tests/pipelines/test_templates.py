"""Templates: `${expr}` JMESPath over the run context, type preservation, interpolation, `now`."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.errors import TemplateFailed
from pipelines.templates import (
    Rendering,
    TemplateSyntaxError,
    reads_steps,
    render,
    template_errors,
    template_parse,
)

CONTEXT: dict[str, Any] = {
    "params": {
        "n": 5,
        "pi": 3.14,
        "ok": True,
        "city": "Chisinau",
        "tags": ["a", "b"],
        "user": {"name": "Ana", "langs": ["ro", "en"]},
        "empty": "",
        "nothing": None,
        "hostile": "${params.n}",
    },
    "steps": {
        "weather": {"summary": "sunny", "high_c": 21},
        "events": {"events": [{"title": "Standup", "minutes": 15}, {"title": "Review", "minutes": 45}]},
    },
    "event": {"topic": "email.received", "payload": {"from": "ion@example.com"}},
    "task": {"id": "t-1", "title": "Briefing", "timezone": "Europe/Chisinau"},
    "run": {"id": "r-1", "trigger": "schedule"},
    # A Friday 08:30 in Chisinau (UTC+2); DST starts there on Sunday 2026-03-29 at 03:00.
    "now": "2026-03-27T08:30:00+02:00",
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # One whole ${expr}: the JSON type of the result.
        ("${params.n}", 5),
        ("${params.pi}", 3.14),
        ("${params.ok}", True),
        ("${params.tags}", ["a", "b"]),
        ("${params.user}", {"name": "Ana", "langs": ["ro", "en"]}),
        ("${params.nothing}", None),
        ("${ params.n }", 5),
        # Inside a longer string: interpolated; objects and arrays as JSON, null as empty.
        ("n=${params.n}", "n=5"),
        ("${params.n}${params.n}", "55"),
        ("ok=${params.ok} pi=${params.pi}", "ok=true pi=3.14"),
        ("tags: ${params.tags}", 'tags: ["a", "b"]'),
        ("user ${params.user}", 'user {"name": "Ana", "langs": ["ro", "en"]}'),
        ("[${params.nothing}]", "[]"),
        ("[${params.missing.deeper}]", "[]"),
        ("Hi ${params.user.name} from ${params.city}!", "Hi Ana from Chisinau!"),
        # No template, and escapes.
        ("plain text", "plain text"),
        ("cost: $5 {not a template}", "cost: $5 {not a template}"),
        ("$${params.n}", "${params.n}"),
        ("a $${literal} and ${params.n}", "a ${literal} and 5"),
        # Every context root.
        ("${steps.weather.summary}", "sunny"),
        ("${event.payload.from}", "ion@example.com"),
        ("${task.title}", "Briefing"),
        ("${run.trigger}", "schedule"),
        # JMESPath: functions, projections, filters, multi-select hashes (braces inside ${}).
        ("${length(params.tags)}", 2),
        ("${join(', ', params.user.langs)}", "ro, en"),
        ("${steps.events.events[*].title}", ["Standup", "Review"]),
        ("${sum(steps.events.events[*].minutes)}", 60),
        ("${steps.events.events[?minutes > `30`].title | [0]}", "Review"),
        ("${ {city: params.city, n: params.n} }", {"city": "Chisinau", "n": 5}),
        ('${`{"a": "}"}`}', {"a": "}"}),
        ("${'a}b'}", "a}b"),
        ("${params.city == 'Chisinau'}", True),
        ("${to_string(params.n)}", "5"),
        ("${not_null(params.nothing, 'fallback')}", "fallback"),
        # Missing paths render null.
        ("${params.missing}", None),
        ("${steps.nope.field}", None),
        # Values from the context are data: a template inside them is never rendered again.
        ("${params.hostile}", "${params.n}"),
        ("x ${params.hostile}", "x ${params.n}"),
    ],
)
def test_template_table(template: str, expected: Any) -> None:
    assert render(template, CONTEXT) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("${now}", "2026-03-27T08:30:00+02:00"),
        ("${now+24h}", "2026-03-28T08:30:00+02:00"),
        ("${now-30m}", "2026-03-27T08:00:00+02:00"),
        ("${now+90s}", "2026-03-27T08:31:30+02:00"),
        ("${now + 1h}", "2026-03-27T09:30:00+02:00"),
        # Elapsed hours across the spring-forward: 48 h later the clock shows 09:30 (UTC+3).
        ("${now+48h}", "2026-03-29T09:30:00+03:00"),
        # Calendar days keep the wall-clock time across DST.
        ("${now+2d}", "2026-03-29T08:30:00+03:00"),
        ("${now+7d}", "2026-04-03T08:30:00+03:00"),
        ("${now+1w}", "2026-04-03T08:30:00+03:00"),
        ("${now-1d}", "2026-03-26T08:30:00+02:00"),
        ("from ${now} to ${now+24h}", "from 2026-03-27T08:30:00+02:00 to 2026-03-28T08:30:00+02:00"),
    ],
)
def test_now_and_shifts_in_the_task_timezone(template: str, expected: str) -> None:
    assert render(template, CONTEXT) == expected


def test_shift_into_a_dst_gap_takes_the_offset_before_the_gap() -> None:
    # Chisinau's clocks jump from 02:00 to 03:00 on 2026-03-29, so 02:30 that day does not exist;
    # read with the offset before the gap (+02:00) it is 03:30 new time (RFC 5545).
    context = {**CONTEXT, "now": "2026-03-28T02:30:00+02:00"}
    assert render("${now+1d}", context) == "2026-03-29T03:30:00+03:00"


def test_rendering_recurses_through_objects_and_arrays_and_keeps_keys() -> None:
    value = {
        "${not.a.key}": "${params.n}",
        "list": ["${params.city}", {"deep": ["${params.tags}", 7, None, True]}],
        "static": {"a": 1},
    }
    assert render(value, CONTEXT) == {
        "${not.a.key}": 5,
        "list": ["Chisinau", {"deep": [["a", "b"], 7, None, True]}],
        "static": {"a": 1},
    }


def test_rendering_records_the_expressions_that_came_out_null() -> None:
    rendering = Rendering()
    render({"a": "${params.missing}", "b": "x${steps.nope}", "c": "${params.n}"}, CONTEXT, rendering)
    assert rendering.unresolved == ["params.missing", "steps.nope"]


@pytest.mark.parametrize(
    "hostile",
    [
        "${__import__('os').system('touch MARKER')}",
        "${params | system('touch MARKER')}",
        "${eval('1+1')}",
        "${params.__class__}",
        "${params.__dict__}",
        "${open('/etc/passwd')}",
        "${{{'a': 1}}}",
        '${ `"\\u0000"` }',
        "${" + "[" * 300 + "}",
        "${" + "a." * 2000 + "b}",
    ],
)
def test_hostile_templates_run_no_code(hostile: str, tmp_path: Any) -> None:
    marker = tmp_path / "pwned"
    try:
        result = render(hostile.replace("MARKER", str(marker)), CONTEXT)
    except TemplateFailed:
        result = None
    # Whatever did render is plain data from the context (attribute-looking paths are null).
    assert result is None or isinstance(result, str)
    assert not marker.exists()


def test_unknown_functions_and_bad_syntax_are_syntax_errors() -> None:
    with pytest.raises(TemplateSyntaxError, match="unknown JMESPath function"):
        template_parse("${__import__('os')}")
    for broken in ["${", "${}", "${params.n", "${a[}", "x ${'unterminated}"]:
        with pytest.raises(TemplateSyntaxError):
            template_parse(broken)


def test_template_errors_name_the_path_inside_the_value() -> None:
    errors = template_errors({"ok": "${params.n}", "bad": {"deeper": ["${params.n", "fine"]}})
    assert list(errors) == ["bad.deeper.0"]
    assert "unterminated" in errors["bad.deeper.0"]


def test_rendered_output_is_bounded(settings: Any) -> None:
    settings.ORDINAUT_MAX_RENDERED_BYTES = 1000
    big = {**CONTEXT, "params": {"blob": "x" * 600}}
    assert len(render("${params.blob}", big)) == 600
    with pytest.raises(TemplateFailed, match="ORDINAUT_MAX_RENDERED_BYTES"):
        render(["${params.blob}", "${params.blob}"], big)
    with pytest.raises(TemplateFailed, match="ORDINAUT_MAX_RENDERED_BYTES"):
        render("${params.blob}${params.blob}", big)


def test_a_type_error_inside_jmespath_is_a_template_failure() -> None:
    with pytest.raises(TemplateFailed, match="length"):
        render("${length(params.n)}", CONTEXT)


@pytest.mark.parametrize(
    "template",
    [
        "${steps.weather.summary}",
        "${values(@)[?weather].weather.summary}",
        "${*.weather.high_c}",
        "${@.steps.weather}",
        '${"steps".weather}',
        "${[@][0].steps.events}",
        "${length(@.steps)}",
        "high: ${not_null(params.nothing, steps.weather.high_c)}",
    ],
)
def test_templates_that_can_see_steps_read_them(template: str) -> None:
    assert reads_steps({"x": template})
    assert render(template, CONTEXT) != render(template, {**CONTEXT, "steps": {}}), "the outputs make a difference"


@pytest.mark.parametrize(
    "template",
    [
        "${params.n}",
        "${params.steps}",
        "${params.tags[?@ == 'steps']}",
        "${params.user | steps}",
        "${params.user.*}",
        "${sort_by(params.tags[*].{n: @}, &n)}",
        "${now+1d} and ${task.title}",
        "no templates, only the word steps",
    ],
)
def test_templates_that_cannot_see_steps_render_the_same_without_them(template: str) -> None:
    assert not reads_steps({"x": template})
    assert render(template, CONTEXT) == render(template, {**CONTEXT, "steps": {}})


def test_a_condition_over_the_whole_context_reads_steps() -> None:
    assert reads_steps({}, "length(values(@)[?weather]) > `0`")
    assert reads_steps({}, "${@.steps.weather.summary == 'sunny'}")
    assert not reads_steps({}, "params.ok")
