"""`if` conditions: bare JMESPath or one ${...}, with JMESPath truthiness."""

from __future__ import annotations

from typing import Any

import pytest

from ordinaut_site.errors import TemplateFailed
from pipelines.templates import condition_error, condition_evaluate

CONTEXT: dict[str, Any] = {
    "params": {"zero": 0, "one": 1, "empty": "", "text": "x", "none": None, "no": False, "yes": True},
    "steps": {
        "approval": {"status": "approved", "approved_items": []},
        "list": {"items": [], "more": [1]},
        "obj": {"empty": {}, "full": {"a": 1}},
    },
}


@pytest.mark.parametrize(
    ("condition", "decision"),
    [
        # JMESPath truthiness: 0 is true; false, null, "", [] and {} are false.
        ("params.zero", True),
        ("params.one", True),
        ("params.text", True),
        ("params.yes", True),
        ("params.empty", False),
        ("params.none", False),
        ("params.no", False),
        ("params.missing", False),
        ("steps.list.items", False),
        ("steps.list.more", True),
        ("steps.obj.empty", False),
        ("steps.obj.full", True),
        ("`0`", True),
        ("`[]`", False),
        ("`{}`", False),
        ("''", False),
        # Comparisons with raw strings, bare or wrapped in ${...}.
        ("steps.approval.status == 'approved'", True),
        ("${steps.approval.status == 'approved'}", True),
        ("  ${ steps.approval.status != 'approved' }  ", False),
        ('steps.approval.status == `"approved"`', True),
        ("steps.missing.status == 'approved'", False),
        ("length(steps.list.more) > `0`", True),
        ("params.zero == `0` && params.text", True),
        ("params.empty || params.text", True),
        ("!(params.none)", True),
        ("!(params.zero)", False),
    ],
)
def test_condition_table(condition: str, decision: bool) -> None:
    assert condition_evaluate(condition, CONTEXT)[0] is decision


@pytest.mark.parametrize(
    "condition",
    ["", "   ", "${a} and ${b}", "steps.[", "${steps.approval.status == 'approved'", "eval('x')"],
)
def test_invalid_conditions_are_reported_at_validation(condition: str) -> None:
    assert condition_error(condition)


def test_runtime_type_errors_fail_the_condition() -> None:
    with pytest.raises(TemplateFailed):
        condition_evaluate("length(params.zero)", CONTEXT)
