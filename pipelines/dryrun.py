"""Dry-run of a pipeline: what each step would receive and decide, without calling any tool."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from ordinaut_site.errors import TemplateFailed

from .spec import approval_warnings, payload_errors, step_id_of
from .templates import Rendering, condition_evaluate, render
from .tools import schema_errors, tool_find


def pipeline_dry_run(
    *,
    payload: Any,
    params: dict[str, Any] | None = None,
    step_outputs: dict[str, Any] | None = None,
    event: Any = None,
    timezone_name: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Report structural errors, unknown tools, each step's rendered input (upstream outputs are
    the fakes given by step id, else null), input-schema violations, template paths that came
    out null, and each `if` decision. `valid` is false on any error; null paths are warnings."""
    structural = payload_errors(payload)
    errors = [{"field": field, "message": message} for field, messages in structural.items() for message in messages]
    warnings: list[dict[str, str]] = []
    steps: list[dict[str, Any]] = []
    pipeline = payload.get("pipeline") if isinstance(payload, dict) else None
    # An error about the payload as a whole (not an object, too deep, too big) means it is not
    # one to walk: rendering a too-deep `with` would recurse past Python's limit.
    if not isinstance(pipeline, list) or "payload" in structural:
        return {"valid": False, "errors": errors, "warnings": warnings, "steps": steps}

    fakes = step_outputs or {}
    tz_name = timezone_name or settings.TIME_ZONE
    base_params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
    at = (now or timezone.now()).astimezone(ZoneInfo(tz_name)).replace(microsecond=0)
    context: dict[str, Any] = {
        "params": {**base_params, **(params or {})},
        "event": event,
        "now": at.isoformat(),
        "task": {"id": None, "title": "(dry run)", "timezone": tz_name},
        "run": {"id": None, "trigger": "manual", "trigger_key": None, "scheduled_for": None, "replay_of": None},
        "steps": {},
    }
    for index, step in enumerate(pipeline[: settings.ORDINAUT_MAX_STEPS]):
        if not isinstance(step, dict):
            continue
        steps.append(_dry_run_step(index, step, context, fakes, errors, warnings))
    warnings.extend(approval_warnings(pipeline[: settings.ORDINAUT_MAX_STEPS]))
    return {"valid": not errors, "errors": errors, "warnings": warnings, "steps": steps}


def _dry_run_step(
    index: int,
    step: dict[str, Any],
    context: dict[str, Any],
    fakes: dict[str, Any],
    errors: list[dict[str, str]],
    warnings: list[dict[str, str]],
) -> dict[str, Any]:
    path = f"payload.pipeline.{index}"
    step_id = step_id_of(step, index)
    uses = step.get("uses")
    tool = tool_find(uses) if isinstance(uses, str) and uses else None
    report: dict[str, Any] = {
        "index": index,
        "id": step_id,
        "uses": uses,
        "tool_found": tool is not None,
        "if_result": None,
        "would_run": True,
        "rendered_input": None,
        "input_errors": [],
        "unresolved_paths": [],
        "errors": [],
    }
    condition = step.get("if")
    if isinstance(condition, str):
        try:
            report["if_result"], _ = condition_evaluate(condition, context)
            report["would_run"] = report["if_result"]
        except TemplateFailed as exc:
            report["errors"].append(f"if: {exc.message}")
            errors.append({"field": f"{path}.if", "message": f"step {step_id!r}: {exc.message}"})
    step_context = context
    if "foreach" in step:
        # The item template is checked against a sample item: the first of the list the
        # foreach gives over this dry run's context (null when it gives none).
        sample = _foreach_sample(step["foreach"], context, report, path, step_id, errors, warnings)
        step_context = {**context, "item": sample, "item_index": 0}
    rendering = Rendering()
    try:
        report["rendered_input"] = render(step.get("with", {}), step_context, rendering)
    except TemplateFailed as exc:
        report["errors"].append(f"with: {exc.message}")
        errors.append({"field": f"{path}.with", "message": f"step {step_id!r}: {exc.message}"})
    report["unresolved_paths"] = sorted(set(rendering.unresolved))
    for expr in report["unresolved_paths"]:
        warnings.append({"field": f"{path}.with", "message": f"step {step_id!r}: ${{{expr}}} renders null"})

    if tool is None:
        if isinstance(uses, str) and uses:
            errors.append(
                {"field": f"{path}.uses", "message": f"step {step_id!r}: no tool named {uses!r} is registered"}
            )
    elif "with: " not in " ".join(report["errors"]):
        report["input_errors"] = schema_errors(tool.input_schema, report["rendered_input"], prefix="with")
        if report["would_run"]:
            errors.extend(
                {"field": f"{path}.with", "message": f"step {step_id!r}: {problem}"}
                for problem in report["input_errors"]
            )

    output = fakes.get(step_id) if report["would_run"] else None
    context["steps"][step_id] = output
    alias = step.get("save_as")
    if isinstance(alias, str) and alias:
        context["steps"][alias] = output
    return report


def _foreach_sample(
    foreach: Any,
    context: dict[str, Any],
    report: dict[str, Any],
    path: str,
    step_id: str,
    errors: list[dict[str, str]],
    warnings: list[dict[str, str]],
) -> Any:
    """Evaluate a foreach in the dry run: its item count and sample item go in the report."""
    report["foreach"] = {"items": None, "sample_item": None}
    try:
        values = render(foreach, context, Rendering())
    except TemplateFailed as exc:
        report["errors"].append(f"foreach: {exc.message}")
        errors.append({"field": f"{path}.foreach", "message": f"step {step_id!r}: {exc.message}"})
        return None
    if values is None:
        warnings.append(
            {
                "field": f"{path}.foreach",
                "message": f"step {step_id!r}: foreach renders null here (give the upstream step's output in "
                "step_outputs); the item template was checked against a null item",
            }
        )
        return None
    if not isinstance(values, list):
        message = f"foreach gives {type(values).__name__}, not a list"
        report["errors"].append(f"foreach: {message}")
        errors.append({"field": f"{path}.foreach", "message": f"step {step_id!r}: {message}"})
        return None
    limit = settings.ORDINAUT_MAX_FOREACH_ITEMS
    if len(values) > limit:
        message = f"foreach gives {len(values)} items; ORDINAUT_MAX_FOREACH_ITEMS is {limit}"
        report["errors"].append(f"foreach: {message}")
        errors.append({"field": f"{path}.foreach", "message": f"step {step_id!r}: {message}"})
    sample = values[0] if values else None
    report["foreach"] = {"items": len(values), "sample_item": sample}
    return sample
