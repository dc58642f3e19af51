"""Dead workers replaced in seconds, with real `qcluster` processes killed with SIGKILL: one
worker mid-step, the qcluster parent, the whole process group mid-batch. Each cluster here
works a queue of its own (LOOPS_QUEUE), with short leases so that the tests are quick."""

import os
import signal
import time

import pytest

from runs.models import Run, RunStatus, Step
from runs.services import run_trigger_batch
from tests.conftest import Cluster, alive, wait_until
from tests.engine_helpers import deploy, program
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

LEASE = {"LOOPS_LEASE_SECONDS": "3", "LOOPS_HEARTBEAT_SECONDS": "1", "LOOPS_WALL_SECONDS": "20"}
TWO_STEPS = program(
    """
    first = step.do("First", lambda: random.randint(1, 10**12))
    step.do("Slow", lambda: time.sleep(event.body.get("sleep", 3)))
    return first
    """,
    imports="import random\nimport time",
)


def cluster_on(queue: str, **env) -> Cluster:
    return Cluster({**LEASE, "LOOPS_QUEUE": queue, **env})


def _status(run_id: str) -> str:
    return Run.objects.values_list("status", flat=True).get(pk=run_id)


def test_a_killed_worker_is_replaced_and_its_run_carries_on_within_seconds(org):
    loop = deploy(org, TWO_STEPS, slug="two-steps")
    cluster = cluster_on("kill-worker", LOOPS_WORKERS="1")
    try:
        run = RunFactory(loop=loop, status="pending", input={"sleep": 3}, queue="kill-worker")
        slow = wait_until(
            lambda: Step.objects.filter(run=run, name="Slow", status="running").first(), timeout=60
        )
        first = Step.objects.get(run=run, name="First")
        (worker,) = cluster.sandboxed_workers()
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)  # django-q2's sentinel starts another worker

        wait_until(lambda: _status(run.pk) == "succeeded", timeout=60, interval=0.1)
        recovered_in = time.monotonic() - killed_at
    finally:
        cluster.stop()
    # The lease (3 s) runs out, the clock queues the run again, the new worker replays it.
    assert recovered_in < 3 + 3 + 5, recovered_in
    run.refresh_from_db()
    assert run.executions == 2
    assert run.output == first.output  # "First" was not run again
    again = Step.objects.get(run=run, name="First")
    assert (again.attempts, again.finished_at) == (1, first.finished_at)
    assert Step.objects.get(run=run, name="Slow").started_at > slow.started_at


def test_killing_the_qcluster_parent_takes_every_process_of_it_along(org, loop):
    cluster = cluster_on("kill-parent")
    try:
        run = RunFactory(loop=loop, status="pending", input={"name": "x"}, queue="kill-parent")
        wait_until(lambda: _status(run.pk) == "succeeded", timeout=60)
        wait_until(cluster.sandboxed_workers, timeout=10)
        processes = cluster.descendants()
        assert len(processes) >= 4  # sentinel, workers, their sandboxes …
        os.kill(cluster.proc.pid, signal.SIGKILL)  # only the parent
        cluster.proc.wait()
        wait_until(lambda: not any(alive(pid) for pid in processes), timeout=10)
    finally:
        cluster.stop()


def test_sigterm_to_the_whole_process_group_stops_the_cluster_promptly(org, loop):
    """What systemd or a terminal's Ctrl-C does. django-q2's sentinel dies of the signal while
    waiting on the stop event its parent then sets; the parent must not wait for it for ever.
    Which of the two sees the signal first varies: a few rounds."""
    for round_ in range(4):
        queue = f"group-term-{round_}"
        cluster = cluster_on(queue)
        try:
            run = RunFactory(loop=loop, status="pending", input={"name": "x"}, queue=queue)
            wait_until(lambda: _status(run.pk) == "succeeded", timeout=60)  # noqa: B023
            processes = [cluster.proc.pid, *cluster.descendants()]
            os.killpg(cluster.proc.pid, signal.SIGTERM)
            cluster.proc.wait(timeout=10)
            wait_until(lambda: not any(alive(pid) for pid in processes), timeout=5)  # noqa: B023
        finally:
            cluster.stop()


def test_a_graceful_stop_finishes_the_runs_in_hand_and_takes_no_more(org):
    """SIGTERM to the qcluster process alone (a deploy): workers finish the run they hold and
    the cluster ends, without waiting for their turns (LOOPS_TURN_SECONDS, 20 s here) to run
    out on a backlog; the backlog stays pending for the next cluster."""
    loop = deploy(org, TWO_STEPS, slug="backlog")
    batch = run_trigger_batch(loop=loop, inputs=[{"sleep": 0.3}] * 200, trigger_type="user")
    runs = Run.objects.filter(batch=batch)
    runs.update(queue="graceful")
    cluster = cluster_on("graceful", LOOPS_TURN_SECONDS="20")
    try:
        wait_until(lambda: runs.filter(status="succeeded").count() >= 4, timeout=60)
        asked_at = time.monotonic()
        cluster.proc.send_signal(signal.SIGTERM)
        cluster.proc.wait(timeout=30)
        stopped_in = time.monotonic() - asked_at
    finally:
        cluster.stop()
    assert stopped_in < 8, stopped_in
    assert not runs.filter(status="running").exists()  # the runs in hand ended
    assert runs.filter(status="pending").count() > 100  # the rest wait for the next cluster


def test_a_killed_process_group_mid_batch_loses_no_finished_step(org):
    loop = deploy(org, TWO_STEPS, slug="two-steps")
    batch = run_trigger_batch(
        loop=loop, inputs=[{"sleep": 0.2}] * 30, trigger_type="user"
    )  # queued on this process's queue: moved to the clusters' below
    runs = Run.objects.filter(batch=batch)
    runs.update(queue="kill-group")
    first = cluster_on("kill-group")
    try:
        wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() >= 5, timeout=60)
        wait_until(lambda: runs.filter(status=RunStatus.RUNNING).exists(), timeout=30)
    finally:
        first.stop(signal.SIGKILL)  # the whole process group
    stranded = runs.exclude(status=RunStatus.SUCCEEDED).count()
    assert stranded > 0
    finished = {
        (s.run_id, s.key): (s.output, s.finished_at)
        for s in Step.objects.filter(run__in=runs, status="succeeded")
    }
    second = cluster_on("kill-group")
    try:
        wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() == 30, timeout=90)
    finally:
        second.stop()
    for step in Step.objects.filter(run__in=runs):
        if (step.run_id, step.key) in finished:  # a finished step is never run again
            assert (step.output, step.finished_at) == finished[(step.run_id, step.key)]
    assert Step.objects.filter(run__in=runs).count() == 60  # two steps per run, each once
    for run in runs:
        assert run.output == Step.objects.get(run=run, key="First").output
