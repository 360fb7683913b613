"""Builders for task payloads used across tests."""

from __future__ import annotations

from typing import Any


def echo_pipeline(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "params": extra.pop("params", {}),
        "pipeline": [{"id": f"s{i}", "uses": "orchestrator.echo", "with": {"i": i}} for i in range(n)],
    }


def manual_task_body(payload: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"title": fields.pop("title", "test task"), "schedule_kind": "manual", "payload": payload, **fields}


def make_task(owner: Any, payload: dict[str, Any], **fields: Any) -> Any:
    """A manual task saved straight through the ORM (payload validated like the API does)."""
    from pipelines.spec import payload_validate
    from tasks.models import Task

    return Task.objects.create(
        owner=owner,
        title=fields.pop("title", "test task"),
        schedule_kind="manual",
        payload=payload_validate(payload),
        **fields,
    )


def drive(run_id: Any, *, start: int = 0, max_jobs: int = 100) -> list[Any]:
    """Run a run's steps in this process, as the chain would, without a broker: a retry or a
    short wait is re-run at once (its countdown is recorded, not waited). Returns the outcomes."""
    from runs.engine import Next, RetryIn, step_execute

    outcomes: list[Any] = []
    index = start
    for _ in range(max_jobs):
        outcome = step_execute(run_id=str(run_id), index=index, claim_id=f"message-{index}")
        outcomes.append(outcome)
        if isinstance(outcome, RetryIn):
            continue
        if outcome is Next.CONTINUE or (outcome is Next.STOP and drive_items(run_id, index, outcomes)):
            index += 1
            continue
        break
    return outcomes


def drive_items(run_id: Any, index: int, outcomes: list[Any], *, max_jobs: int = 10_000) -> bool:
    """Run a foreach step's items due in this process, in item order, as their lanes would (a
    retry at once); True when that settled the step and the run goes on to the next step."""
    from runs.engine import RetryIn
    from runs.fanout import item_execute
    from runs.models import Run, StepItem, StepRun

    step = StepRun.objects.filter(run_id=run_id, index=index).first()
    if step is None or step.status != StepRun.Status.RUNNING or not StepItem.objects.filter(step=step).exists():
        return False
    for item_index in StepItem.objects.filter(step=step, status="pending").values_list("index", flat=True):
        for _ in range(max_jobs):
            outcome = item_execute(
                run_id=str(run_id), index=index, item_index=item_index, claim_id=f"item-{index}-{item_index}"
            )
            outcomes.append(outcome)
            if not isinstance(outcome, RetryIn):
                break
    step.refresh_from_db()
    run = Run.objects.get(pk=run_id)
    return step.status in StepRun.DONE and run.status == Run.Status.RUNNING


def finished(run_id: Any) -> Any:
    """The run once it is terminal (or waiting for approval), else None: for wait_for()."""
    from runs.models import Run

    run = Run.objects.get(pk=run_id)
    return run if run.status in (*Run.TERMINAL, Run.Status.WAITING_APPROVAL) else None


DRAFTS = [{"thread": "t1", "text": "hi"}, {"thread": "t2", "text": "hello"}, {"thread": "t3", "text": "hey"}]


def approval_payload(
    *, on_error: str = "fail", timeout_seconds: float | None = None, guarded: bool = True, on_reject: str | None = None
) -> dict[str, Any]:
    """draft -> ask a human -> send what was approved (only if approved, unless not `guarded`), like
    the seed's follow-ups."""
    ask: dict[str, Any] = {
        "message": "Send ${length(steps.draft.messages)} follow-ups?",
        "data": "${steps.draft.messages}",
    }
    if timeout_seconds is not None:
        ask["timeout_seconds"] = timeout_seconds
    approval: dict[str, Any] = {
        "id": "ask",
        "uses": "orchestrator.request_approval",
        "with": ask,
        "save_as": "approval",
        "on_error": on_error,
    }
    if on_reject is not None:
        approval["on_reject"] = on_reject
    send: dict[str, Any] = {
        "id": "send",
        "uses": "orchestrator.echo",
        "with": {"sent": "${steps.approval.approved_items}", "by": "${steps.approval.decided_by.name}"},
    }
    if guarded:
        send["if"] = "${steps.approval.status == 'approved'}"
    return {
        "params": {"drafts": DRAFTS},
        "pipeline": [
            {"id": "draft", "uses": "orchestrator.echo", "with": {"messages": "${params.drafts}"}},
            approval,
            send,
        ],
    }


def run_in_process(owner: Any, payload: dict[str, Any], **task_fields: Any) -> Any:
    """A manual run of a new task, driven in this process until it stops (no broker)."""
    from runs.models import Run
    from runs.services import run_create

    run = run_create(task=make_task(owner, payload, **task_fields), trigger="manual")
    drive(run.pk)
    return Run.objects.get(pk=run.pk)


def start_manual_run(client: Any, payload: dict[str, Any], **fields: Any) -> str:
    """Through the API, as an agent would: create a manual task, run it now; the run's id."""
    created = client.post("/tasks", manual_task_body(payload, **fields), format="json")
    assert created.status_code == 201, created.json()
    started = client.post(f"/tasks/{created.json()['id']}/run_now", format="json")
    assert started.status_code == 202, started.json()
    return str(started.json()["id"])
