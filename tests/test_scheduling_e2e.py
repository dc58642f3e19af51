"""Timers on time and fair turns, through HTTP and the session's real worker cluster (two
worker processes): a sleep ends within a second of its time, a retry's delay too; another
organization's run starts within seconds while a batch drains, and so does a run of another
loop of the same organization; concurrency limits hold, and a waiting run holds no slot."""

import itertools
import time
from datetime import timedelta

import httpx
import pytest
from django.conf import settings
from django.db.models import Max
from django.utils import timezone

from loops.models import Loop, Schedule
from loops.schedules import schedule_create
from runs.models import Run, RunStatus, Step
from tests.conftest import wait_until
from tests.engine_helpers import deploy, program
from tests.factories import make_token

pytestmark = pytest.mark.django_db(transaction=True)


def ended(api, run_id: str) -> dict | None:
    run = api.get(f"/api/v1/runs/{run_id}").json()["data"]
    return run if run["status"] in ("succeeded", "failed", "cancelled") else None


def stop_everything_left() -> None:
    """Runs left pending by a test would keep the shared cluster busy into the next test."""
    Run.objects.filter(status=RunStatus.PENDING).update(status=RunStatus.CANCELLED)
    wait_until(lambda: not Run.objects.filter(status=RunStatus.RUNNING).exists(), timeout=60)


def test_a_sleep_ends_within_a_second_of_its_time(worker, api, org):
    sleeper = deploy(org, program('step.sleep("Nap", 2)\nreturn "rested"'), slug="sleeper")
    run_ids = [
        api.post(f"/api/loop/acme/{sleeper.slug}", json={}).json()["runId"] for _ in range(5)
    ]
    for run_id in run_ids:
        run = wait_until(lambda run_id=run_id: ended(api, run_id), timeout=60)
        assert run["output"] == "rested"
        nap = Step.objects.get(run_id=run_id, name="Nap")
        lateness = (nap.finished_at - nap.started_at).total_seconds() - 2
        assert 0 <= lateness < 1, lateness


def test_a_retry_delay_ends_within_a_second_of_its_time(worker, api, org):
    flaky = deploy(
        org,
        program(
            """
            def flaky():
                if step.attempt == 1:
                    raise ValueError("first attempt fails")
                return step.attempt
            return step.do("Flaky", flaky, retries=Retry(limit=1, delay=2))
            """
        ),
        slug="flaky",
    )
    run_id = api.post(f"/api/loop/acme/{flaky.slug}", json={}).json()["runId"]
    run = wait_until(lambda: ended(api, run_id), timeout=60)
    assert (run["status"], run["output"]) == ("succeeded", 2)
    run = Run.objects.get(pk=run_id)
    assert run.executions == 2  # no worker held through the delay
    # The second execution started within a second of the delay's end.
    first_failed = run.logs.get(level="warning").time
    assert 2 <= (run.steps.get().started_at - first_failed).total_seconds() < 3


def test_a_wait_times_out_within_a_second_of_its_time(worker, api, org):
    waiter = deploy(org, program('return step.wait_for_event("Signal", "go", timeout=2)'), "waiter")
    run_id = api.post(f"/api/loop/acme/{waiter.slug}", json={}).json()["runId"]
    run = wait_until(lambda: ended(api, run_id), timeout=60)
    assert run["status"] == "failed"  # nothing came: the wait's timeout failed its step
    signal = Step.objects.get(run_id=run_id, name="Signal")
    lateness = (signal.finished_at - signal.started_at).total_seconds() - 2
    assert 0 <= lateness < 1, lateness


def test_a_schedule_starts_its_run_within_a_second_of_its_time(worker, org, loop):
    schedule = schedule_create(loop=loop, cron="* * * * *", input={"name": "cron"})
    due = timezone.now() + timedelta(seconds=2)  # its next time, brought forward
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due)
    run = wait_until(lambda: Run.objects.filter(loop=loop, status="succeeded").first(), timeout=60)
    assert run.trigger_type == "system"
    lateness = (run.created_at - due).total_seconds()
    assert 0 <= lateness < 1, lateness


def test_another_organizations_run_starts_within_seconds_while_a_batch_drains(
    worker, api, org, other_org, live_server
):
    slow = deploy(
        org, program('step.do("Work", lambda: time.sleep(0.25))', imports="import time"), "slow"
    )
    response = api.post(f"/api/v1/loops/{slow.slug}/runs", json={"inputs": [{}] * 200})
    assert response.status_code == 202
    batch_runs = Run.objects.filter(batch_id=response.json()["data"]["batchId"])
    wait_until(lambda: batch_runs.filter(status=RunStatus.SUCCEEDED).count() >= 4, timeout=60)
    deploy(other_org, program('return "mine"'), slug="quick")
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {make_token(other_org)}"}
    ) as other:
        started = time.monotonic()
        run_id = other.post("/api/loop/globex/quick", json={}).json()["runId"]
        run = wait_until(lambda: ended(other, run_id), timeout=60, interval=0.05)
        latency = time.monotonic() - started
    assert run["output"] == "mine"
    assert latency < 3, latency
    assert batch_runs.filter(status=RunStatus.PENDING).count() > 100  # the batch still drains
    stop_everything_left()


def test_concurrency_limits_hold_under_load(worker, api, org):
    code = program('step.do("Work", lambda: time.sleep(0.3))', imports="import time")
    limited = deploy(org, code, slug="limited")
    Loop.objects.filter(pk=limited.pk).update(concurrency_limit=1)
    free = deploy(org, code, slug="free")
    for loop in (limited, free):
        api.post(f"/api/v1/loops/{loop.slug}/runs", json={"inputs": [{}] * 6})
    most = {"limited": 0, "all": 0}
    deadline = time.monotonic() + 90
    while Run.objects.exclude(status=RunStatus.SUCCEEDED).exists():
        assert time.monotonic() < deadline
        going = Run.objects.filter(status=RunStatus.RUNNING)
        most["limited"] = max(most["limited"], going.filter(loop=limited).count())
        most["all"] = max(most["all"], going.count())
        time.sleep(0.02)
    assert most["limited"] == 1  # never more than its limit
    # While the other loop used every other slot of the cluster (2 workers, each with its lanes).
    assert most["all"] == 2 * settings.LOOPS_EXECUTIONS_PER_WORKER
    # Runs over the limit waited as pending, then started as others ended.
    limited_runs = Run.objects.filter(loop=limited).order_by("started_at")
    starts = list(limited_runs.values_list("started_at", "completed_at"))
    for (_, previous_end), (next_start, _) in itertools.pairwise(starts):
        assert next_start >= previous_end
    assert limited_runs.aggregate(last=Max("completed_at"))["last"] is not None


def test_an_organization_limit_holds_across_its_loops(worker, api, org):
    org.concurrency_limit = 1
    org.save()
    code = program('step.do("Work", lambda: time.sleep(0.2))', imports="import time")
    for slug in ("one", "two"):
        deploy(org, code, slug=slug)
        api.post(f"/api/v1/loops/{slug}/runs", json={"inputs": [{}] * 4})
    most = 0
    deadline = time.monotonic() + 90
    while Run.objects.exclude(status=RunStatus.SUCCEEDED).exists():
        assert time.monotonic() < deadline
        most = max(most, Run.objects.filter(status=RunStatus.RUNNING).count())
        time.sleep(0.02)
    assert most == 1


def test_a_run_of_another_loop_starts_within_seconds_while_a_batch_of_the_same_org_drains(
    worker, api, org
):
    slow = deploy(
        org, program('step.do("Work", lambda: time.sleep(0.25))', imports="import time"), "slow"
    )
    response = api.post(f"/api/v1/loops/{slow.slug}/runs", json={"inputs": [{}] * 200})
    batch_runs = Run.objects.filter(batch_id=response.json()["data"]["batchId"])
    wait_until(lambda: batch_runs.filter(status=RunStatus.SUCCEEDED).count() >= 4, timeout=60)
    deploy(org, program('return "mine"'), slug="quick")
    started = time.monotonic()
    run_id = api.post("/api/loop/acme/quick", json={}).json()["runId"]
    run = wait_until(lambda: ended(api, run_id), timeout=60, interval=0.05)
    latency = time.monotonic() - started
    assert run["output"] == "mine"
    assert latency < 3, latency  # its loop's turn came before the batch's next runs
    assert batch_runs.filter(status=RunStatus.PENDING).count() > 100  # the batch still drains
    stop_everything_left()


def test_a_waiting_run_holds_no_slot_of_its_loops_limit(worker, api, org):
    napper = deploy(org, program('step.sleep("Nap", 2)\nreturn "rested"'), slug="napper")
    Loop.objects.filter(pk=napper.pk).update(concurrency_limit=1)
    run_ids = [api.post(f"/api/loop/acme/{napper.slug}", json={}).json()["runId"] for _ in range(3)]
    runs = [wait_until(lambda run_id=run_id: ended(api, run_id), timeout=60) for run_id in run_ids]
    assert [run["output"] for run in runs] == ["rested"] * 3
    naps = Step.objects.filter(run_id__in=run_ids, name="Nap")
    # All three slept at once: each started its nap while the others slept, one at a time
    # within the limit of one running run.
    last_nap_started = max(nap.started_at for nap in naps)
    first_run_done = min(Run.objects.filter(pk__in=run_ids).values_list("completed_at", flat=True))
    assert last_nap_started < first_run_done
