"""Durability through the HTTP API and real django-q2 worker processes."""

import os
import signal

import pytest

from loops.schedules import schedule_create
from runs.models import Run, Step
from tests.conftest import Cluster, wait_until
from tests.engine_helpers import deploy, program
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _status(run_id: str) -> str:
    return Run.objects.values_list("status", flat=True).get(pk=run_id)


def test_a_sleeping_run_holds_no_worker(worker, api, org, loop):
    sleeper = deploy(org, program('step.sleep("Nap", 3600)\nreturn 1'), slug="sleeper")
    # More sleeping runs than the cluster has worker processes (2).
    sleeping = [
        api.post(f"/api/loop/{org.slug}/{sleeper.slug}", json={}).json()["runId"] for _ in range(3)
    ]
    for run_id in sleeping:
        wait_until(lambda run_id=run_id: _status(run_id) == "waiting", timeout=60)
    response = api.post(
        f"/api/loop/{org.slug}/{loop.slug}?mode=live&timeout=60", json={"name": "Khaya"}
    )
    assert response.status_code == 200
    assert response.json()["data"]["output"] == {"greeting": "Hello, Khaya!"}
    assert all(_status(run_id) == "waiting" for run_id in sleeping)


def test_ask_and_approve_through_the_api(worker, api, org):
    asker = deploy(
        org,
        program(
            """
            name = step.ask("Name", "Whom shall we greet?")
            step.approve("Send", f"Greet {name}?")
            return step.do("Greet", lambda: f"Hello, {name}!")
            """
        ),
        slug="asker",
    )
    run_id = api.post(f"/api/v1/loops/{asker.slug}/runs", json={"input": {}}).json()["data"]["id"]
    wait_until(lambda: _status(run_id) == "waiting", timeout=60)
    run = api.get(f"/api/v1/runs/{run_id}").json()["data"]
    assert run["pending"]["kind"] == "input"
    assert api.post(f"/api/v1/runs/{run_id}/respond", json={"action": "approve"}).status_code == 400
    assert api.post(f"/api/v1/runs/{run_id}/respond", json={"action": "input"}).status_code == 400
    answered = api.post(
        f"/api/v1/runs/{run_id}/respond", json={"action": "input", "input": "Khaya"}
    )
    assert answered.status_code == 202
    wait_until(
        lambda: (
            (api.get(f"/api/v1/runs/{run_id}").json()["data"]["pending"] or {}).get("kind")
            == "approval"
        ),
        timeout=60,
    )
    assert (
        api.post(
            f"/api/v1/runs/{run_id}/respond", json={"action": "input", "input": "x"}
        ).status_code
        == 400
    )
    assert (
        api.post(
            f"/api/v1/runs/{run_id}/respond", json={"action": "approve", "reason": "ok"}
        ).status_code
        == 202
    )
    wait_until(lambda: _status(run_id) == "succeeded", timeout=60)
    assert api.get(f"/api/v1/runs/{run_id}").json()["data"]["output"] == "Hello, Khaya!"
    assert api.post(f"/api/v1/runs/{run_id}/respond", json={"action": "approve"}).status_code == 409


def test_a_steps_result_is_saved_while_the_program_goes_on(worker, api, org):
    """A step's end may wait briefly to be written with the execution's next write
    (LOOPS_STEP_HOLD_SECONDS), never until a program that computes on has finished."""
    thinker = deploy(
        org,
        program(
            """
            value = step.do("First", lambda: 41 + 1)
            time.sleep(3)
            return value
            """,
            imports="import time",
        ),
        slug="thinker",
    )
    run_id = api.post(f"/api/loop/{org.slug}/{thinker.slug}", json={}).json()["runId"]
    first = wait_until(
        lambda: Step.objects.filter(run_id=run_id, name="First", status="succeeded").first(),
        timeout=60,
    )
    assert _status(run_id) == "running"
    assert first.output == 42
    wait_until(lambda: _status(run_id) == "succeeded", timeout=30)


def test_cancel_stops_a_running_execution_at_the_next_step_boundary(worker, api, org):
    slow = deploy(
        org,
        program(
            """
            step.do("Slow", lambda: time.sleep(3))
            step.do("After", lambda: 1)
            return "finished"
            """,
            imports="import time",
        ),
        slug="slow",
    )
    run_id = api.post(f"/api/loop/{org.slug}/{slow.slug}", json={}).json()["runId"]
    wait_until(lambda: Step.objects.filter(run_id=run_id, name="Slow").exists(), timeout=60)
    response = api.post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 202
    assert response.json()["data"]["status"] == "cancelled"
    wait_until(
        lambda: (
            not Run.objects.filter(pk=run_id, steps__status="running").exists()
            and Step.objects.filter(run_id=run_id, name="Slow").exclude(status="running").exists()
        ),
        timeout=30,
    )
    run = Run.objects.get(pk=run_id)
    assert run.status == "cancelled"
    assert run.output is None
    assert not Step.objects.filter(run_id=run_id, name="After").exists()
    assert api.post(f"/api/v1/runs/{run_id}/cancel").status_code == 409


def test_sigkill_mid_step_loses_no_finished_step(org, transactional_db):
    crashy = deploy(
        org,
        program(
            """
            first = step.do("First", lambda: random.randint(1, 10**12))
            step.do("Slow", lambda: time.sleep(4))
            return first
            """,
            imports="import random\nimport time",
        ),
        slug="crashy",
    )
    env = {"LOOPS_WALL_SECONDS": "10", "LOOPS_LEASE_SECONDS": "2", "LOOPS_HEARTBEAT_SECONDS": "1",
           "LOOPS_QUEUE": "crash"}  # fmt: skip
    # A cluster on a queue of its own, so that the execution surely runs in the process we kill.
    cluster = Cluster(env)
    try:
        run = RunFactory(loop=crashy, status="pending", input={}, queue="crash")
        slow = wait_until(
            lambda: Step.objects.filter(run=run, name="Slow", status="running").first(), timeout=60
        )
        first = Step.objects.get(run=run, name="First")
        assert first.status == "succeeded"
        cluster.stop(signal.SIGKILL)  # the worker dies in the middle of "Slow"
    finally:
        cluster.stop()
    assert _status(run.pk) == "running"

    # The next cluster's clock finds the lease run out, queues the run again, and a worker
    # takes it up: only the step that was in flight runs again.
    second = Cluster(env)
    try:
        wait_until(lambda: _status(run.pk) == "succeeded", timeout=60, interval=0.2)
    finally:
        second.stop()
    run.refresh_from_db()
    assert run.output == first.output
    assert run.executions == 2
    again = Step.objects.get(run=run, name="First")
    assert (again.pk, again.output, again.attempts, again.finished_at) == (
        first.pk,
        first.output,
        1,
        first.finished_at,
    )
    rerun = Step.objects.get(run=run, name="Slow")
    assert rerun.pk == slow.pk
    assert rerun.status == "succeeded"
    assert rerun.started_at > slow.started_at  # only the interrupted step ran again


def test_a_scheduled_loop_produces_system_runs(worker, org, loop):
    schedule = schedule_create(loop=loop, cron="* * * * *", input={"name": "cron"})
    # Due now: the cluster's clock starts its run within a second, and a worker executes it.
    type(schedule).objects.filter(pk=schedule.pk).update(
        next_run_at=schedule.next_run_at.replace(year=2020)
    )
    run = wait_until(lambda: Run.objects.filter(loop=loop, status="succeeded").first(), timeout=60)
    assert run.trigger_type == "system"
    assert run.output == {"greeting": "Hello, cron!"}


def test_worker_processes_are_separate_from_the_sandbox(worker):
    assert worker.worker_pids()
    assert os.getpid() not in worker.worker_pids()
