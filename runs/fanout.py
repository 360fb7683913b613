"""Fan-out: the body of a `foreach` step's own job (its items rendered, recorded and sent) and of an
item job (one item's tool call, recorded, and the step settled by whichever item ends it)."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction

from ordinaut_site import logs
from ordinaut_site.budgets import budget_charge
from ordinaut_site.errors import AttemptsExhausted, StepError, TemplateFailed, ToolInputInvalid
from pipelines.spec import Step
from pipelines.storable import storable_text
from pipelines.templates import Rendering, render
from pipelines.tools import AwaitApproval, Suspend, Tool, ToolCall, schema_errors, tool_resolve

from . import services as run_services
from .attempts import Attempt, Next, Outcome, RetryIn, attempt_failure, retry_delay_s, retry_policy, tool_call
from .models import Run, StepItem, StepRun
from .selectors import run_get_for_step
from .services import After
from .services.items import (
    ItemClaim,
    NewItem,
    item_claim,
    item_finished,
    item_retry_later,
    items_dispatch_on_commit,
    items_due,
    items_exist,
    items_latest_deadline,
    items_record,
    items_settle,
    lock_own_rows,
)

logger = logging.getLogger(__name__)


class ForeachNotAList(StepError):
    code = "foreach_not_a_list"


class ForeachTooManyItems(StepError):
    code = "foreach_too_many_items"


def foreach_values(foreach: Any, context: dict[str, Any]) -> list[Any]:
    """The items of a `foreach` (its expression's value, or its list with templates rendered);
    a StepError when that is not a list or holds more than ORDINAUT_MAX_FOREACH_ITEMS."""
    values = render(foreach, context, Rendering())
    if not isinstance(values, list):
        kind = "null" if values is None else type(values).__name__
        raise ForeachNotAList(f"foreach gave {kind}, not a list")
    limit = settings.ORDINAUT_MAX_FOREACH_ITEMS
    if len(values) > limit:
        raise ForeachTooManyItems(f"foreach gave {len(values)} items; ORDINAUT_MAX_FOREACH_ITEMS is {limit}")
    return values


def item_inputs(step: Step, tool: Tool | None, values: list[Any], context: dict[str, Any]) -> list[NewItem]:
    """The step's `with` rendered for each item (`${item}`, `${item_index}`), checked against the
    tool's input schema when the tool is known. An item whose input cannot be made is recorded
    failed, with no call; all the items' inputs together stay within ORDINAUT_MAX_RENDERED_BYTES."""
    remaining = settings.ORDINAUT_MAX_RENDERED_BYTES
    items: list[NewItem] = []
    for index, value in enumerate(values):
        item_context = {**context, "item": value, "item_index": index}
        try:
            rendered = render(step.with_, item_context, Rendering(budget=remaining))
        except TemplateFailed as exc:
            items.append(NewItem(input=None, error=exc.as_dict()))
            continue
        remaining -= len(json.dumps(rendered, ensure_ascii=False, separators=(",", ":")))
        if remaining < 0:
            raise TemplateFailed(
                f"the items' rendered inputs are larger than ORDINAUT_MAX_RENDERED_BYTES "
                f"({settings.ORDINAUT_MAX_RENDERED_BYTES}) together"
            )
        problems = schema_errors(tool.input_schema, rendered, prefix="with") if tool is not None else []
        error = ToolInputInvalid("; ".join(problems)).as_dict() if problems else None
        items.append(NewItem(input=rendered, error=error))
    return items


def _reused(run: Run, record: StepRun, items: list[NewItem]) -> list[NewItem]:
    """A replay from this step: the items the replayed run already did, with the same input,
    keep their output (copied); only the others run again."""
    if run.replay_of_id is None:
        return items
    earlier = {
        item.index: item
        for item in StepItem.objects.filter(
            step__run_id=run.replay_of_id,
            step__index=record.index,
            step__step_id=record.step_id,
            step__uses=record.uses,
            status=StepItem.Status.SUCCEEDED,
        )
    }
    return [
        NewItem(input=new.input, reused=earlier[index])
        if new.error is None and index in earlier and earlier[index].input == new.input
        else new
        for index, new in enumerate(items)
    ]


def fan_out(*, run: Run, step: Step, record: StepRun, context: dict[str, Any], timeout_s: float) -> After | None:
    """A foreach step's own job: the first time, evaluate the items and record them; every time
    (a step claimed again after a loss), send the items still due, in `max_parallel` lanes. When
    nothing is left to run the step is settled here, and the After tells the chain what follows;
    None when items are in flight (the last of them settles the step and sends the rest).
    A StepError is the step's own failure (not a list, too many items, an unknown tool)."""
    if not items_exist(record):
        values = foreach_values(step.foreach, context)
        tool = tool_resolve(record.uses)
        items = _reused(run, record, item_inputs(step, tool, values, context))
        items_record(step=record, items=items, fan_out={"foreach": len(items), "max_parallel": step.max_parallel})
        logger.info("step %s fans out over %s items, %s at a time", record.step_id, len(items), step.max_parallel)
    with transaction.atomic():
        locked = lock_own_rows(StepRun.objects.filter(pk=record.pk, status=StepRun.Status.RUNNING)).first()
        if locked is None:
            return None
        after = items_settle(run=run, step=step, record=locked, send_next=False)
        if after is not None:
            return after
        due = items_due(step=locked)
        if due:
            items_dispatch_on_commit(
                run=run, index=record.index, item_indexes=due, lanes=step.max_parallel, timeout_s=timeout_s
            )
    latest = items_latest_deadline(record)
    if latest is not None:  # items in flight elsewhere: the sweeper waits for them
        Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, deadline_at__lt=latest).update(deadline_at=latest)
    return None


# --- An item job -------------------------------------------------------------------------------


def item_execute(*, run_id: str, index: int, item_index: int, claim_id: str) -> Outcome:
    """Run one item of a foreach step, at most once to success per item. CONTINUE: the lane goes
    on to its next item; STOP: the step or the run has ended."""
    run = run_get_for_step(run_id=run_id)
    if run is None or run.status != Run.Status.RUNNING or index >= len(run.pipeline):
        return Next.STOP
    with logs.bind(run=run.pk, task=run.task_id, step=index, item=item_index):
        return _item_execute(run, index, item_index, claim_id)


def _item_execute(run: Run, index: int, item_index: int, claim_id: str) -> Outcome:
    step = Step.of(run.pipeline, index)
    timeout_s = run_services.step_timeout_s(task=run.task, step=run.pipeline[index])
    claim = item_claim(run=run, index=index, item_index=item_index, claim_id=claim_id, timeout_s=timeout_s)
    if claim is None:
        # Done, or owned by another message: the lane's next items may still be due.
        still = StepRun.objects.filter(run_id=run.pk, index=index, status=StepRun.Status.RUNNING).exists()
        return Next.CONTINUE if still else Next.STOP
    item = claim.item
    attempt = Attempt(item, claim.at)
    policy = retry_policy(task=run.task, step=step)
    try:
        if item.attempts > policy.max_attempts:
            # Only redeliveries get here: each time the item's worker died mid-call.
            raise AttemptsExhausted(f"gave up after {item.attempts - 1} attempts whose worker was lost")
        tool = tool_resolve(step.uses)
        if tool.cost > 0:
            budget_charge(agent=run.task.owner, cost=tool.cost, tool=tool.name)
        call = ToolCall(
            run_id=str(run.pk),
            step_id=f"{claim.step.step_id}[{item_index}]",
            timeout_s=timeout_s,
            attempt=item.attempts,
        )
        output, _ = tool_call(tool, item.input, call)
    except (Suspend, AwaitApproval):
        error = StepError("a foreach item cannot wait or ask for approval", code="input_invalid")
        return _item_failed(run, step, claim, attempt, error, timeout_s)
    except (OperationalError, InterfaceError):
        raise  # the database, not the tool: the job retries (runs/jobs.py)
    except Exception as exc:  # a StepError, a time limit, a bug: the item's failure, never a lost run
        error = attempt_failure(exc, timeout_s=timeout_s, what=f"item {item_index} of step {claim.step.step_id}")
        return _item_failed(run, step, claim, attempt, error, timeout_s)
    after = item_finished(run=run, step=step, claim=claim, history=attempt.end("succeeded"), output=output)
    return Next.CONTINUE if after is None else Next.STOP


def _item_failed(
    run: Run, step: Step, claim: ItemClaim, attempt: Attempt[StepItem], exc: StepError, timeout_s: float
) -> Outcome:
    """Retry the item by the step's policy (the same message comes back), or record its failure."""
    item = claim.item
    error = exc.as_dict()
    error["message"] = storable_text(str(error["message"]))
    error["attempt"] = item.attempts
    policy = retry_policy(task=run.task, step=step)
    if exc.retryable and item.attempts < policy.max_attempts:
        delay = retry_delay_s(policy, item.attempts)
        history = attempt.end("retry", error=error, retry_in_s=delay)
        logger.info("item %s attempt %s failed (%s); retrying in %.1fs", item.index, item.attempts, exc, delay)
        if item_retry_later(run=run, claim=claim, error=error, history=history, delay_s=delay, timeout_s=timeout_s):
            return RetryIn(delay)
        return Next.STOP
    after = item_finished(run=run, step=step, claim=claim, history=attempt.end("failed", error=error), error=error)
    return Next.CONTINUE if after is None else Next.STOP
