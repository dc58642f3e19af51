"""Claims that race, as the workers of many machines do: limits hold, each claimer gets a run
of its own.

Eight threads with connections of their own claim at the same moment, against the database
only (an advisory lock on PostgreSQL, one writer at a time on SQLite)."""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Organization
from loops.models import Loop
from loops_project import ids
from runs import dispatch, state
from runs.models import Run, RunStatus, Step, StepStatus, Timer
from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

CLAIMERS = 8


def _race() -> list:
    start = threading.Barrier(CLAIMERS)
    claims, errors = [], []

    def claimer():
        try:
            start.wait()
            claims.append(state.claim_next())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return [claim for claim in claims if claim is not None]


def _pending(loop: Loop, n: int) -> None:
    for _ in range(n):
        RunFactory(loop=loop, status=RunStatus.PENDING, queue=dispatch.queue_key())


@pytest.mark.parametrize("limit", ["loop", "organization"])
def test_racing_claims_never_pass_a_limit_of_one(org, limit):
    loop = LoopFactory(organization=org)
    if limit == "loop":
        Loop.objects.filter(pk=loop.pk).update(concurrency_limit=1)
    else:
        Organization.objects.filter(pk=org.pk).update(concurrency_limit=1)
    _pending(loop, 20)
    assert len(_race()) == 1
    assert Run.objects.filter(status=RunStatus.RUNNING).count() == 1


def test_racing_claimers_each_get_a_run_of_their_own(org):
    """None comes back empty while runs wait (an empty claim ends a worker's turn), and no run
    is taken twice."""
    _pending(LoopFactory(organization=org), 20)
    claims = _race()
    assert len(claims) == CLAIMERS
    assert len({claim.run.pk for claim in claims}) == CLAIMERS
    assert Run.objects.filter(status=RunStatus.RUNNING).count() == CLAIMERS


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's planner")
def test_a_claim_reads_the_head_of_the_queue_not_the_loops_history(org, loop):
    """Statistics gathered while a batch was all pending (runs.batches analyzes a batch that
    outgrew them) must not lead claims through every run of the loop: mid-drain, a claim that
    walked run_loop_created read each claimed run again."""
    queue = dispatch.queue_key()
    pending = [
        RunFactory.build(loop=loop, status=RunStatus.PENDING, queue=queue) for _ in range(2000)
    ]
    Run.objects.bulk_create(pending)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Run._meta.db_table}")
    for _ in range(1400):
        claim = state.claim_next()
        Run.objects.filter(pk=claim.run.pk).update(status=RunStatus.SUCCEEDED)

    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + state._choice_sql(),
                       state._choice_params())  # fmt: skip
        plan = cursor.fetchone()[0]

    def nodes(node):
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    scans = [n for n in nodes(plan[0]["Plan"]) if n.get("Relation Name") == Run._meta.db_table]
    assert {n.get("Index Name") for n in scans} <= {"run_pending", "run_running", "runs_run_pkey"}
    assert sum(n.get("Rows Removed by Filter", 0) for n in scans) == 0


def test_a_stale_execution_writes_nothing_to_a_run_taken_over(org, loop):
    _pending(loop, 1)
    stale = state.claim_next()
    with transaction.atomic():  # its worker died: the lease ran out and the run was queued again
        Run.objects.filter(pk=stale.run.pk).update(
            lease_expires_at=timezone.now() - timedelta(seconds=1)
        )
        assert [change.run_id for change in state.release_expired()] == [stale.run.pk]
    current = state.claim_next()
    assert current.run.pk == stale.run.pk
    step = Step.objects.create(
        id=ids.step_id(), run_id=current.run.pk, order=0, key="s", name="S", kind="do",
        status=StepStatus.RUNNING,
    )  # fmt: skip

    # The stale execution, still going, fails and waits: none of it lands.
    state.steps_in_progress_fail(stale.owner, {"message": "stale"})
    state.run_waits_for(stale.run.pk, {"kind": "sleep"}, stale.owner)
    state.step_wake_at(step.pk, timezone.now(), stale.owner)
    step.refresh_from_db()
    assert (step.status, step.error, step.wake_at) == (StepStatus.RUNNING, None, None)
    assert Run.objects.get(pk=current.run.pk).pending is None
    assert not Timer.objects.exists()

    # The run's execution now: its writes do.
    state.step_wake_at(step.pk, timezone.now() + timedelta(hours=1), current.owner)
    state.run_waits_for(current.run.pk, {"kind": "sleep"}, current.owner)
    state.steps_in_progress_fail(current.owner, {"message": "it crashed"})
    step.refresh_from_db()
    assert (step.status, step.error) == (StepStatus.FAILED, {"message": "it crashed"})
    assert Run.objects.get(pk=current.run.pk).pending == {"kind": "sleep"}
    assert Timer.objects.filter(target=step.pk).exists()


def _worker_dies(claim) -> list:
    """The claim's worker dies mid-step: its step is running, its lease runs out, and the
    clock releases what expired."""
    Step.objects.update_or_create(
        run_id=claim.run.pk, key="s",
        defaults={"order": 0, "name": "Eat memory", "kind": "do", "status": StepStatus.RUNNING},
        create_defaults={"id": ids.step_id(), "order": 0, "name": "Eat memory", "kind": "do",
                         "status": StepStatus.RUNNING},
    )  # fmt: skip
    Run.objects.filter(pk=claim.run.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    return state.release_expired()


def test_a_run_whose_worker_dies_every_time_fails_at_the_limit_and_is_not_run_again(
    org, loop, api, settings
):
    settings.LOOPS_MAX_LOST_EXECUTIONS = 3
    _pending(loop, 1)
    for lost in (1, 2):
        (change,) = _worker_dies(state.claim_next())
        assert change.status == RunStatus.PENDING
        run = api.get(f"/api/v1/runs/{change.run_id}").json()["data"]
        assert run["status"] == "pending", lost

    (change,) = _worker_dies(state.claim_next())
    assert change.status == RunStatus.FAILED
    assert state.claim_next() is None  # not run a fourth time
    body = api.get(f"/api/v1/runs/{change.run_id}").json()["data"]
    assert body["status"] == "failed"
    assert body["completedAt"] is not None
    assert body["errorDetail"]["type"] == "WorkerLost"
    assert body["errorDetail"]["stepName"] == "Eat memory"
    assert body["error"] == (
        "Step 'Eat memory' failed: The worker running this run stopped 3 times "
        "(LOOPS_MAX_LOST_EXECUTIONS); it is not run again"
    )
    (step,) = body["steps"]
    assert (step["status"], step["error"]["type"]) == ("failed", "WorkerLost")
    logs = api.get(f"/api/v1/runs/{change.run_id}/logs").json()
    assert [(entry["level"], entry["message"][:40]) for entry in logs["data"]] == [
        ("warning", "The worker running this run stopped (los"),
        ("warning", "The worker running this run stopped (los"),
        ("error", "The worker running this run stopped 3 ti"),
    ]


def test_a_clock_takes_up_only_the_runs_of_its_own_queue(org, loop):
    """The runs of another queue are its clusters' to take up, under their settings."""
    _pending(loop, 1)
    claim = state.claim_next()
    Run.objects.filter(pk=claim.run.pk).update(queue="elsewhere")
    assert _worker_dies(claim) == []
    assert Run.objects.get(pk=claim.run.pk).status == RunStatus.RUNNING
    Run.objects.filter(pk=claim.run.pk).update(queue=dispatch.queue_key())
    assert [change.status for change in state.release_expired()] == [RunStatus.PENDING]
