"""Worker liveness, in-process against the real Redis: the in-flight record of a worker's jobs, how
the sweeper finds a dead worker and recovers exactly the runs whose running step one of its jobs
had claimed, once, and what a worker that comes back can and cannot do."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.utils import timezone

from ordinaut_site import liveness
from runs import services
from runs.engine import Next, step_execute
from runs.models import Run, StepRun
from runs.services import run_create, runs_sweep
from runs.services.recovery import lost_claims_recover, runs_with_lost_claims
from tests.support.pipelines import drive, echo_pipeline, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def dispatched(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(services.dispatch, "run_dispatch", lambda **kwargs: sent.append(kwargs))
    return sent


@pytest.fixture
def incarnations(redis_client: redis.Redis, settings: Any) -> Iterator[Any]:
    """incarnation() -> a fresh worker incarnation name; its keys are removed afterwards. A Redis
    started a moment ago (CI) declares nobody dead for DEAD_AFTER_S: 0 here."""
    settings.ORDINAUT_WORKER_DEAD_AFTER_S = 0
    made: list[str] = []

    def make() -> str:
        name = f"test-{uuid.uuid4().hex[:8]}@host:{uuid.uuid4().hex[:8]}"
        made.append(name)
        return name

    yield make
    for name in made:
        redis_client.delete(liveness.alive_key(name), liveness.inflight_key(name))
        redis_client.srem(liveness.registry_key(), name)
        redis_client.hdel(liveness.beats_key(), name)


def announce(name: str, *, ttl_s: float = 60) -> liveness.Heartbeat:
    beat = liveness.Heartbeat(name, every_s=1, ttl_s=ttl_s)
    beat.beat()
    return beat


def as_worker(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """This process plays a pool child of the worker `name` (what the bootstep sets before forking)."""
    monkeypatch.setattr(liveness, "_incarnation", name)


def die(redis_client: redis.Redis, name: str) -> None:
    """The alive key runs out (as it does ORDINAUT_WORKER_DEAD_AFTER_S after the last beat)."""
    redis_client.delete(liveness.alive_key(name))


def test_a_job_is_listed_in_flight_from_prerun_to_postrun(
    incarnations: Any, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    name = incarnations()
    announce(name)
    as_worker(monkeypatch, name)

    liveness._job_started(task_id="job-1")
    assert redis_client.hgetall(liveness.inflight_key(name)) == {b"job-1": str(os.getpid()).encode()}
    liveness._job_ended(task_id="job-1")
    assert redis_client.hlen(liveness.inflight_key(name)) == 0


def test_a_postrun_does_not_remove_the_same_message_started_again_by_another_pool_process(
    incarnations: Any, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    name = incarnations()
    as_worker(monkeypatch, name)
    # A retry with no countdown: the same message id, already running in another child.
    redis_client.hset(liveness.inflight_key(name), "job-1", os.getppid())
    liveness._job_ended(task_id="job-1")
    assert redis_client.hget(liveness.inflight_key(name), "job-1") == str(os.getppid()).encode()


def test_the_heartbeat_drops_entries_of_pool_processes_that_are_gone(
    incarnations: Any, redis_client: redis.Redis
) -> None:
    name = incarnations()
    gone_pid = 2**22 + 12345  # above any pid_max the kernel hands out by default
    redis_client.hset(liveness.inflight_key(name), mapping={"killed": gone_pid, "running": os.getpid()})
    announce(name)
    assert redis_client.hkeys(liveness.inflight_key(name)) == [b"running"]


def test_only_workers_whose_alive_key_expired_are_dead(incarnations: Any, redis_client: redis.Redis) -> None:
    alive, dead = incarnations(), incarnations()
    announce(alive)
    announce(dead)
    redis_client.hset(liveness.inflight_key(alive), "a1", os.getpid())
    redis_client.hset(liveness.inflight_key(dead), mapping={"d1": os.getpid(), "d2": os.getpid()})
    die(redis_client, dead)

    found = {w.incarnation: w.task_ids for w in liveness.workers_dead()}
    assert found[dead] == {"d1", "d2"}
    assert alive not in found
    assert alive in liveness.workers_alive()


def test_nobody_is_dead_while_redis_itself_just_restarted(
    incarnations: Any, redis_client: redis.Redis, settings: Any
) -> None:
    name = incarnations()
    announce(name)
    die(redis_client, name)
    uptime = int(redis_client.info("server")["uptime_in_seconds"])
    settings.ORDINAUT_WORKER_DEAD_AFTER_S = uptime + 3600  # the keys may have expired during the outage
    assert liveness.workers_dead() == []


def test_a_dead_workers_running_step_is_reset_and_its_run_redispatched_before_its_deadline(
    agent: Any,
    incarnations: Any,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    step_execute(run_id=str(run.pk), index=0, claim_id="m0")
    services.step_claim(run=run, index=1, claim_id="m1", timeout_s=300)  # the worker dies mid-call
    other = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    services.step_claim(run=other, index=0, claim_id="live-1", timeout_s=300)  # on a live worker
    dead, alive = incarnations(), incarnations()
    announce(dead)
    announce(alive)
    redis_client.hset(liveness.inflight_key(dead), mapping={"m1": 1, "finished-meanwhile": 1})
    redis_client.hset(liveness.inflight_key(alive), "live-1", os.getpid())
    die(redis_client, dead)
    deadline = Run.objects.get(pk=run.pk).deadline_at
    assert deadline is not None
    assert deadline > timezone.now(), "long before its deadline"

    with django_capture_on_commit_callbacks(execute=True):
        result = runs_sweep()

    assert result["runs_recovered"] == 1
    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 1)]
    steps = list(StepRun.objects.filter(run=run).order_by("index"))
    assert [(s.status, s.claim_id) for s in steps] == [("succeeded", "m0"), ("pending", ""), ("pending", "")]
    assert StepRun.objects.get(run=other, index=0).claim_id == "live-1", "a live worker's step is left alone"
    # The dead worker is forgotten; the live one is still listed.
    assert not redis_client.exists(liveness.inflight_key(dead))
    assert not redis_client.sismember(liveness.registry_key(), dead)
    assert redis_client.sismember(liveness.registry_key(), alive)

    drive(run.pk, start=1)
    step = StepRun.objects.get(run=run, index=1)
    assert Run.objects.get(pk=run.pk).status == "succeeded"
    assert (step.attempts, [h["outcome"] for h in step.attempt_history]) == (2, ["lost", "succeeded"])
    assert runs_sweep()["runs_recovered"] == 0, "recovered once"
    assert len(dispatched) == 1


def test_two_sweepers_recover_a_dead_workers_run_once(
    agent: Any,
    incarnations: Any,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    services.step_claim(run=run, index=0, claim_id="m0", timeout_s=300)
    dead = incarnations()
    announce(dead)
    redis_client.hset(liveness.inflight_key(dead), "m0", 1)
    die(redis_client, dead)
    # What a second sweeper read before the first one forgot the dead worker.
    [seen] = [w for w in liveness.workers_dead() if w.incarnation == dead]

    with django_capture_on_commit_callbacks(execute=True):
        first = lost_claims_recover()
        second = services.run_recover(run_id=run.pk, lost_claims=seen.task_ids)

    assert (first, second) == (1, 0), "the second finds the step no longer claimed by the lost job"
    assert len(dispatched) == 1


def test_a_worker_that_comes_back_has_its_late_result_refused(
    agent: Any, incarnations: Any, redis_client: redis.Redis, dispatched: list[dict[str, Any]]
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    claim = services.step_claim(run=run, index=0, claim_id="m0", timeout_s=300)
    assert claim is not None
    dead = incarnations()
    announce(dead)
    redis_client.hset(liveness.inflight_key(dead), "m0", 1)
    die(redis_client, dead)
    assert lost_claims_recover() == 1
    # The new message claims and finishes the step.
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0-again") is Next.CONTINUE

    # The old job's worker was only cut off: it finishes its call and reports, under its old claim.
    late = services.step_succeeded(
        run=run, step=claim.step, input={}, output={"late": True}, output_json=None, history=[]
    )

    assert late is None, "refused: the record belongs to the new claim"
    step = StepRun.objects.get(run=run, index=0)
    assert (step.status, step.claim_id, step.output) == ("succeeded", "m0-again", {"i": 0})
    assert services.step_fail(step=claim.step, input={}, error={"code": "late"}) is False


def test_a_dead_worker_that_came_back_is_not_forgotten(incarnations: Any, redis_client: redis.Redis) -> None:
    name = incarnations()
    announce(name)
    redis_client.hset(liveness.inflight_key(name), "old", 1)
    die(redis_client, name)
    [dead] = [w for w in liveness.workers_dead() if w.incarnation == name]
    announce(name)  # it beats again before the sweeper got to it
    redis_client.hset(liveness.inflight_key(name), "new", os.getpid())

    assert liveness.dead_worker_forget(dead) is False
    assert set(redis_client.hkeys(liveness.inflight_key(name))) == {b"new", b"old"}
    assert redis_client.sismember(liveness.registry_key(), name)


def test_lost_claim_lookup_finds_running_steps_of_active_runs_only(agent: Any) -> None:
    running = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    services.step_claim(run=running, index=0, claim_id="c-run", timeout_s=60)
    done = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    step_execute(run_id=str(done.pk), index=0, claim_id="c-done")

    assert runs_with_lost_claims({"c-run", "c-done", "c-unknown"}) == [running.pk]
    assert runs_with_lost_claims(set()) == []


def test_a_run_whose_next_message_died_unstarted_with_its_worker_is_redispatched(
    agent: Any,
    incarnations: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    step_execute(run_id=str(run.pk), index=0, claim_id="m0")
    live = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    services.step_claim(run=live, index=0, claim_id="elsewhere", timeout_s=300)
    dead = incarnations()
    announce(dead)
    as_worker(monkeypatch, dead)
    # The worker's main process received the messages of step 1 and of the other run's step 0
    # (prefetched; the latter was redelivered and is running elsewhere), then died.
    liveness._job_received(request=type("Request", (), {"id": "m1", "args": [str(run.pk), 1], "kwargs": {}})())
    liveness._job_received(request=type("Request", (), {"id": "m2", "args": [str(live.pk), 0], "kwargs": {}})())
    assert redis_client.hget(liveness.inflight_key(dead), "m1") == f"{os.getpid()} {run.pk} 1".encode()
    die(redis_client, dead)

    with django_capture_on_commit_callbacks(execute=True):
        assert lost_claims_recover() == 1

    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 1)]
    assert StepRun.objects.get(run=live, index=0).claim_id == "elsewhere"
    assert not redis_client.exists(liveness.inflight_key(dead))


def test_a_foreach_item_claimed_by_a_dead_workers_job_makes_its_run_due_at_once(
    agent: Any,
    incarnations: Any,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from datetime import timedelta

    from runs.models import StepItem

    run = run_create(task=make_task(agent.agent, echo_pipeline(1)), trigger="manual")
    services.step_claim(run=run, index=0, claim_id="step-msg", timeout_s=300)  # the foreach step, live
    step = StepRun.objects.get(run=run, index=0)
    far = timezone.now() + timedelta(hours=1)
    StepItem.objects.create(step=step, index=0, status="running", claim_id="item-1", deadline_at=far)
    dead = incarnations()
    announce(dead)
    redis_client.hset(liveness.inflight_key(dead), "item-1", 1)
    die(redis_client, dead)

    with django_capture_on_commit_callbacks(execute=True):
        result = runs_sweep()

    item = StepItem.objects.get(step=step, index=0)
    assert item.deadline_at is not None
    assert item.deadline_at <= timezone.now(), "due now: the re-claimed step sends it again"
    assert result["runs_recovered"] == 1, "its run was re-dispatched in the same sweep"
    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 0)]


def test_a_run_whose_worker_died_between_a_step_and_sending_the_next_is_redispatched(
    agent: Any,
    incarnations: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    run = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    dead = incarnations()
    announce(dead)
    as_worker(monkeypatch, dead)
    # The pool child started step 0's job, recorded the step's success, and was killed before the
    # chain sent step 1's message (and before task_postrun took the job off the in-flight list).
    liveness._job_started(task_id="m0", args=[str(run.pk), 0], kwargs={})
    assert step_execute(run_id=str(run.pk), index=0, claim_id="m0") is Next.CONTINUE
    # Another run of the same worker whose next step is already running elsewhere is left alone.
    busy = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    liveness._job_started(task_id="b0", args=[str(busy.pk), 0], kwargs={})
    step_execute(run_id=str(busy.pk), index=0, claim_id="b0")
    services.step_claim(run=Run.objects.get(pk=busy.pk), index=1, claim_id="b1-elsewhere", timeout_s=300)
    die(redis_client, dead)

    with django_capture_on_commit_callbacks(execute=True):
        assert lost_claims_recover() == 1

    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(run.pk, 1)]
    assert Run.objects.get(pk=run.pk).status == "running"
    assert StepRun.objects.get(run=busy, index=1).claim_id == "b1-elsewhere"
    assert not redis_client.exists(liveness.inflight_key(dead))


def test_a_next_message_a_dying_worker_took_unlisted_is_sent_again(
    agent: Any,
    incarnations: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from datetime import timedelta

    # Step 0 finished on some live worker, which sent step 1's message; Redis handed it to the
    # BRPOP of a worker that died in that instant, before kombu or task_received recorded it.
    lost = run_create(task=make_task(agent.agent, echo_pipeline(3)), trigger="manual")
    assert step_execute(run_id=str(lost.pk), index=0, claim_id="m0") is Next.CONTINUE
    # Also finished in the dying worker's last moments, but its next message is held by a live worker.
    held = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    step_execute(run_id=str(held.pk), index=0, claim_id="h0")
    live = incarnations()
    announce(live)
    redis_client.hset(liveness.inflight_key(live), "h1", f"{os.getpid()} {held.pk} 1")
    # Its step finished long before the worker died: its next message is somewhere else.
    old = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    step_execute(run_id=str(old.pk), index=0, claim_id="o0")
    StepRun.objects.filter(run=old, index=0).update(finished_at=timezone.now() - timedelta(minutes=5))
    dead = incarnations()
    announce(dead)  # its last heartbeat: now
    die(redis_client, dead)
    [found] = [w for w in liveness.workers_dead() if w.incarnation == dead]
    assert found.task_ids == frozenset()
    assert found.last_beat is not None

    with django_capture_on_commit_callbacks(execute=True):
        assert lost_claims_recover() == 1

    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(lost.pk, 1)]
    assert not redis_client.sismember(liveness.registry_key(), dead), "forgotten"
    assert not redis_client.hexists(liveness.beats_key(), dead)
    # A second pass does not send it again: the worker is forgotten.
    assert lost_claims_recover() == 0


def test_a_new_runs_first_message_a_dying_worker_took_unlisted_is_sent_again(
    agent: Any,
    incarnations: Any,
    redis_client: redis.Redis,
    dispatched: list[dict[str, Any]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    from datetime import timedelta

    # Created (its first step sent) as the worker that took that message died: queued, step 0 pending.
    with django_capture_on_commit_callbacks(execute=True):
        lost = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
        old = run_create(task=make_task(agent.agent, echo_pipeline(2)), trigger="manual")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    dispatched.clear()
    dead = incarnations()
    announce(dead)
    die(redis_client, dead)

    with django_capture_on_commit_callbacks(execute=True):
        assert lost_claims_recover() == 1

    assert [(d["run_id"], d["from_index"]) for d in dispatched] == [(lost.pk, 0)], "not the one created long before"
