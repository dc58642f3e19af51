"""Dead workers replaced in seconds, with real `qcluster` processes killed with SIGKILL:

- one worker mid-step (a single run) and mid-batch (its runs are taken up again within the
  lease and the clock's round, and the batch drains as it would have, plus about that);
- the qcluster parent: every process of it dies with it (after a run, mid-step, mid-batch),
  and the next cluster on the queue carries on with what it left running;
- the whole process group mid-batch (and SIGTERM to it, and to the parent alone: a graceful
  stop).

No step that had finished is run again. Each cluster here works a queue of its own
(LOOPS_QUEUE), with short leases so that the tests are quick; the runs of the newer tests are
triggered through the API, on that queue."""

import os
import signal
import time

import pytest
from django.utils import timezone

from runs import dispatch
from runs.models import Run, RunStatus, Step
from runs.services import run_trigger_batch
from tests.conftest import (
    Cluster,
    alive,
    children_of,
    is_sandbox,
    send_work_to,
    wait_until,
    zygotes_of,
)
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


def test_a_run_that_kills_its_worker_each_time_fails_after_the_limit_and_kills_no_more(org):
    """As a run that eats its worker's memory would: here the test kills whichever worker is
    in the middle of its "Slow" step."""
    loop = deploy(org, TWO_STEPS, slug="two-steps")
    cluster = cluster_on("kill-every-time", LOOPS_WORKERS="1", LOOPS_MAX_LOST_EXECUTIONS="2")
    try:
        run = RunFactory(loop=loop, status="pending", input={"sleep": 30}, queue="kill-every-time")
        for execution in (1, 2):
            wait_until(lambda n=execution: _in_slow_step(run, n), timeout=60)
            (worker,) = cluster.sandboxed_workers()
            os.kill(worker, signal.SIGKILL)
        wait_until(lambda: _status(run.pk) == "failed", timeout=30)
    finally:
        cluster.stop()
    run.refresh_from_db()
    assert (run.executions, run.lost_executions, run.error_type) == (2, 2, "WorkerLost")
    assert run.error_message.startswith("Step 'Slow' failed: The worker running this run stopped")
    assert Step.objects.get(run=run, name="Slow").status == "failed"
    assert Step.objects.get(run=run, name="First").status == "succeeded"


def _in_slow_step(run: Run, execution: int) -> bool:
    return (
        Run.objects.filter(pk=run.pk, executions=execution, status="running").exists()
        and Step.objects.filter(run=run, name="Slow", status="running").exists()
    )


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


# --- the parent, or one worker, killed mid-step and mid-batch; runs triggered through the API ---

LEASE_SECONDS = int(LEASE["LOOPS_LEASE_SECONDS"])
CLOCK_SECONDS = 1  # the clock's round (0.25 s) and a worker's turn to claim the run again


def test_a_worker_killed_mid_batch_is_replaced_and_its_runs_carry_on_within_seconds(
    org, api, monkeypatch
):
    runs, cluster = _batch_draining(org, api, monkeypatch, "kill-worker-batch")
    try:
        worker = wait_until(lambda: _executing_worker(cluster), timeout=10, interval=0.01)
        normal_drain = _drain_seconds(runs)
        os.kill(worker, signal.SIGKILL)  # django-q2's sentinel starts another worker
        killed_at, killed_at_db = time.monotonic(), timezone.now()
        finished = _finished_steps(runs)
        wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() == 40, timeout=60)
        drained_in = time.monotonic() - killed_at
    finally:
        cluster.stop()
    # The dead worker's runs (one per lane) were taken up again once their lease ran out,
    # within seconds: the lease, the clock, and their "Slow" step again.
    retried = runs.filter(executions=2)
    assert retried.exists()
    assert not runs.filter(executions__gt=2).exists()
    for run in retried:
        recovered_in = (run.completed_at - killed_at_db).total_seconds()
        assert recovered_in < LEASE_SECONDS + CLOCK_SECONDS + 3, recovered_in
    # … and the batch drained as it would have, plus about that.
    assert drained_in < normal_drain + LEASE_SECONDS + CLOCK_SECONDS + 5, (drained_in, normal_drain)
    _assert_no_finished_step_ran_again(runs, finished)


def test_a_killed_qcluster_parent_mid_step_leaves_its_run_to_the_next_cluster(
    org, api, monkeypatch
):
    send_work_to(monkeypatch, "kill-parent-step")
    loop = deploy(org, TWO_STEPS, slug="two-steps")
    run_id = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={"sleep": 3}).json()["runId"]
    assert Run.objects.get(pk=run_id).queue == "kill-parent-step"
    first = cluster_on("kill-parent-step")
    try:
        slow = wait_until(
            lambda: Step.objects.filter(run=run_id, name="Slow", status="running").first(),
            timeout=60,
        )
        done = Step.objects.get(run=run_id, name="First")
        killed_at = _kill_the_parent(first)  # in the middle of "Slow"
    finally:
        first.stop()
    assert _status(run_id) == "running"  # no worker of that cluster is left to finish it

    second = cluster_on("kill-parent-step")
    try:
        wait_until(lambda: _status(run_id) == "succeeded", timeout=60, interval=0.1)
        recovered_in = time.monotonic() - killed_at
    finally:
        second.stop()
    # The lease runs out, the new cluster's clock queues the run again, a worker replays it:
    # "Slow" (3 s) runs again, "First" does not.
    assert recovered_in < LEASE_SECONDS + CLOCK_SECONDS + 3 + 4, recovered_in
    run = Run.objects.get(pk=run_id)
    assert run.executions == 2
    assert run.output == done.output
    again = Step.objects.get(run=run, name="First")
    assert (again.attempts, again.finished_at) == (1, done.finished_at)
    assert Step.objects.get(run=run, name="Slow").started_at > slow.started_at


def test_a_killed_qcluster_parent_mid_batch_loses_no_finished_step(org, api, monkeypatch):
    runs, first = _batch_draining(org, api, monkeypatch, "kill-parent-batch")
    try:
        wait_until(lambda: runs.filter(status=RunStatus.RUNNING).exists(), timeout=30)
        normal_drain = _drain_seconds(runs)
        killed_at = _kill_the_parent(first)
    finally:
        first.stop()
    stranded = set(runs.filter(status=RunStatus.RUNNING).values_list("pk", flat=True))
    assert stranded
    finished = _finished_steps(runs)

    second = cluster_on("kill-parent-batch")
    try:
        wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() == 40, timeout=60)
        drained_in = time.monotonic() - killed_at
    finally:
        second.stop()
    # A new cluster starts, the stranded runs' leases run out: then the batch drains as before.
    assert drained_in < normal_drain + LEASE_SECONDS + CLOCK_SECONDS + 5, (drained_in, normal_drain)
    assert set(runs.filter(executions=2).values_list("pk", flat=True)) == stranded
    assert not runs.filter(executions__gt=2).exists()
    _assert_no_finished_step_ran_again(runs, finished)


def _batch_draining(org, api, monkeypatch, queue: str):
    """40 runs of the two-step loop triggered through the API on `queue`, and a cluster of
    that queue that has finished 10 of them (the caller stops it)."""
    send_work_to(monkeypatch, queue)
    loop = deploy(org, TWO_STEPS, slug="two-steps")
    runs = _trigger_batch(api, loop, 40, sleep=0.3)
    cluster = cluster_on(queue)
    try:
        wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() >= 10, timeout=60)
    except BaseException:
        cluster.stop()
        raise
    return runs, cluster


def _trigger_batch(api, loop, count: int, sleep: float):
    inputs = [{"sleep": sleep}] * count
    response = api.post(f"/api/v1/loops/{loop.slug}/runs", json={"inputs": inputs})
    assert response.status_code == 202, response.text
    runs = Run.objects.filter(batch=response.json()["data"]["batchId"])
    assert runs.count() == count
    assert set(runs.values_list("queue", flat=True)) == {dispatch.queue_key()}
    return runs


def _kill_the_parent(cluster: Cluster) -> float:
    """SIGKILL to the qcluster process alone: every process of it dies with it. Returns when."""
    processes = cluster.descendants()
    assert len(processes) >= 4  # sentinel, workers, their sandboxes …
    os.kill(cluster.proc.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    cluster.proc.wait()
    wait_until(lambda: not any(alive(pid) for pid in processes), timeout=10)
    return killed_at


def _drain_seconds(runs) -> float:
    """How long the runs not yet succeeded would take at the pace of those that have."""
    times = list(
        runs.filter(status=RunStatus.SUCCEEDED)
        .order_by("completed_at")
        .values_list("completed_at", flat=True)
    )
    pace = (times[-1] - times[0]).total_seconds() / (len(times) - 1)
    return runs.exclude(status=RunStatus.SUCCEEDED).count() * pace


def _finished_steps(runs) -> dict:
    return {
        (s.run_id, s.key): (s.output, s.finished_at)
        for s in Step.objects.filter(run__in=runs, status="succeeded")
    }


def _assert_no_finished_step_ran_again(runs, finished: dict) -> None:
    for step in Step.objects.filter(run__in=runs):
        if (step.run_id, step.key) in finished:
            assert (step.output, step.finished_at) == finished[(step.run_id, step.key)]
    assert Step.objects.filter(run__in=runs).count() == 2 * runs.count()  # each step once
    for run in runs:
        assert run.output == Step.objects.get(run=run, key="First").output


def _executing_worker(cluster: Cluster) -> int | None:
    """A worker whose sandboxes are up, each zygote with a child (an execution, or the sealed
    spare made for the next). Called while a batch drains, when every worker has runs in
    hand."""
    for worker in cluster.descendants():
        if not is_sandbox(worker) and any(children_of(z) for z in zygotes_of(worker)):
            return worker
    return None
