"""A worker process executes up to LOOPS_EXECUTIONS_PER_WORKER runs at once, one per lane
(runs.engine.turns), each lane with a sandbox of its own started with the worker, with real
`qcluster` processes on queues of their own."""

import pytest

from runs.models import Run, RunStatus
from tests.conftest import Cluster, is_sandbox, send_work_to, wait_until, zygotes_of
from tests.engine_helpers import deploy, program
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

# A step longer than the lease: each lane's run goes on only if the worker renews its lease.
SLOW = program('step.do("Slow", lambda: time.sleep(4))', imports="import time")
LEASE = {"LOOPS_LEASE_SECONDS": "3", "LOOPS_HEARTBEAT_SECONDS": "1"}


def test_one_worker_executes_as_many_runs_at_once_as_it_has_lanes(org):
    lanes = 2
    loop = deploy(org, SLOW, slug="slow")
    queue = "lanes"
    # All pending before the worker starts: its first turn finds work for both lanes at once.
    for _ in range(3):
        RunFactory(loop=loop, status=RunStatus.PENDING, queue=queue)
    cluster = Cluster(
        {**LEASE, "LOOPS_QUEUE": queue, "LOOPS_WORKERS": "1",
         "LOOPS_EXECUTIONS_PER_WORKER": str(lanes)}
    )  # fmt: skip
    try:
        wait_until(lambda: not Run.objects.exclude(status=RunStatus.SUCCEEDED).exists(), timeout=90)
    finally:
        cluster.stop()
    assert set(Run.objects.values_list("executions", flat=True)) == {1}  # no lease ran out
    spans = sorted(Run.objects.values_list("started_at", "completed_at"))
    # How many runs were going at once, at each start.
    at_once = [sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans]
    assert max(at_once) == lanes, spans


def test_every_lane_of_a_worker_has_its_sandbox_before_the_first_run(org):
    """A worker starts its lanes' sandboxes as it starts, so that its first runs do not wait
    for them (a deploy, a worker replaced after a crash)."""
    cluster = Cluster({"LOOPS_QUEUE": "warm", "LOOPS_WORKERS": "2",
                       "LOOPS_EXECUTIONS_PER_WORKER": "2"})  # fmt: skip
    try:

        def sandboxes() -> list[int]:
            found = [len(zygotes_of(p)) for p in cluster.descendants() if not is_sandbox(p)]
            return sorted(n for n in found if n)

        wait_until(lambda: sandboxes() == [2, 2], timeout=60)
        assert cluster.proc.poll() is None
    finally:
        cluster.stop()
    assert not Run.objects.exists()  # nothing was executed to start them


# bubblewrap required and not found: a sandbox that cannot start. `check` refuses to start a
# cluster so configured (loops.E001); its checks are skipped, as when the sandbox breaks once
# the cluster runs (bubblewrap removed by an upgrade, user namespaces used up or turned off).
NO_SANDBOX = {"LOOPS_SANDBOX": "bwrap", "PATH": "/nonexistent"}
NOT_STARTED = "did not start; it takes no runs"


def test_a_worker_whose_sandbox_cannot_start_leaves_runs_pending_for_one_that_can(
    org, api, monkeypatch
):
    """Its lane claims nothing: the run stays pending, not `running` in name only until its
    lease runs out (again at every claim), and a worker whose sandbox works executes it."""
    queue = "no-sandbox"
    loop = deploy(org, program('return step.do("One", lambda: 1)'), slug="one")
    send_work_to(monkeypatch, queue)
    broken = Cluster({**NO_SANDBOX, "LOOPS_QUEUE": queue, "LOOPS_WORKERS": "1",
                      "LOOPS_EXECUTIONS_PER_WORKER": "1"}, args=("--skip-checks",))  # fmt: skip
    try:
        answer = api.post(f"/api/v1/loops/{loop.slug}/runs", json={"input": {}})
        run_id = answer.json()["data"]["id"]

        def tried_twice_and_took_nothing() -> bool:
            status = Run.objects.values_list("status", flat=True).get(pk=run_id)
            assert status == RunStatus.PENDING, f"the run went {status} with no sandbox to run it"
            # Once as the worker starts, and again at a turn after RETRY_SECONDS.
            return broken.output().count(NOT_STARTED) >= 2

        wait_until(tried_twice_and_took_nothing, timeout=60)
        assert broken.proc.poll() is None
        seen = api.get(f"/api/v1/runs/{run_id}").json()["data"]
    finally:
        broken.stop()
    assert (seen["status"], seen["startedAt"]) == ("pending", None)
    assert Run.objects.get(pk=run_id).executions == 0

    healthy = Cluster({"LOOPS_QUEUE": queue, "LOOPS_WORKERS": "1"})
    try:
        wait_until(lambda: api.get(f"/api/v1/runs/{run_id}").json()["data"]["status"]
                   == RunStatus.SUCCEEDED, timeout=60)  # fmt: skip
    finally:
        healthy.stop()
    assert Run.objects.get(pk=run_id).executions == 1
