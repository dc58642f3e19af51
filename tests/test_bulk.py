"""Bulk actions by filter (runs.bulk): the dry run counts what the runs list shows; a job acts
on exactly the runs matched when it was made, in chunks, once each, through the API, the pages
and the real worker; it can be aborted; it is audited once, not once per run."""

from datetime import timedelta

import psycopg
import pytest
from django.db import DatabaseError, connection
from django.urls import reverse
from django.utils import timezone
from django_q.models import OrmQ
from django_q.signing import SignedPackage

from accounts.audit import Actor
from accounts.models import AuditEvent, Role, TokenScope
from runs import bulk, clock, dispatch
from runs.models import (
    CANCELLED_STEP_ERROR,
    BulkJob,
    BulkJobItem,
    Run,
    ScanRequest,
    Step,
    Timer,
    TimerKind,
    WebhookDelivery,
)
from runs.state import Owner
from runs.webhooks import webhook_create
from tests.conftest import database_url_for_subprocess, wait_until
from tests.factories import LoopFactory, MembershipFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

ACTOR = Actor.system("tests")


def waiting(loop, n: int = 1, **fields) -> list[Run]:
    """Runs waiting for an event, each with its waiting step and that step's timeout timer."""
    runs = []
    for _ in range(n):
        run = RunFactory(
            loop=loop, status="waiting", started_at=timezone.now() - timedelta(seconds=10),
            pending={"kind": "event", "eventType": "go"}, **fields,
        )  # fmt: skip
        step = Step.objects.create(
            run=run, order=0, key="Wait#1", name="Wait", kind="event", status="waiting"
        )
        dispatch.set_timer(TimerKind.STEP, step.pk, timezone.now() + timedelta(hours=1))
        runs.append(run)
    return runs


def statuses(runs) -> list[str]:
    return list(Run.objects.filter(pk__in=[r.pk for r in runs]).values_list("status", flat=True))


def work_through(job_id: str) -> BulkJob:
    """Every chunk of a job, in this process, as its tasks would do them."""
    for _ in range(1000):
        job = BulkJob.objects.get(pk=job_id)
        if not job.is_running:
            return job
        bulk.bulk_job_chunk(job_id=job_id, token=job.task_token)
    raise AssertionError("the job did not end")


def list_ids(api, **params) -> list[str]:
    response = api.get("/api/v1/runs", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    assert not response.json()["hasMore"]
    return [run["id"] for run in response.json()["data"]]


def dry_run(api, filter: dict, action: str = "cancel"):
    return api.post("/api/v1/runs/bulk", json={"action": action, "filter": filter, "dryRun": True})


# --- Dry run ---------------------------------------------------------------------------------


def test_dry_run_counts_exactly_what_the_runs_list_shows(api, org, other_org, loop):
    other_loop = LoopFactory(organization=org, slug="other")
    waiting(loop, 3)
    RunFactory.create_batch(2, loop=loop, status="pending")
    RunFactory.create_batch(4, loop=other_loop, status="succeeded")
    RunFactory(loop=other_loop, status="failed", error_message="boom")
    waiting(LoopFactory(organization=other_org, slug="theirs"), 5)  # never counted
    cases = [
        ({}, {}, 10),
        ({"status": "pending,waiting"}, {"status": "pending,waiting"}, 5),
        ({"loop": "other"}, {"loop": "other"}, 5),
        ({"status": "failed", "loop": "other"}, {"status": "failed", "loop": "other"}, 1),
        ({"triggerType": "system"}, {"triggerType": "system"}, 0),
    ]
    for filter, params, expected in cases:
        response = dry_run(api, filter)
        assert response.status_code == 200, response.text
        assert response.json() == {"data": {"count": expected}}, filter
        assert len(list_ids(api, **params)) == expected, filter
    assert not BulkJob.objects.exists()
    assert Run.objects.filter(status="cancelled").count() == 0


def test_a_bad_filter_answers_as_the_runs_list_does(api, loop):
    listed = api.get("/api/v1/runs", params={"status": "nope"})
    bulked = dry_run(api, {"status": "nope"})
    assert bulked.status_code == listed.status_code == 422
    assert bulked.json() == listed.json()
    assert bulked.json()["error"]["details"][0]["field"] == "status"
    for filter, field in [({"loop": "missing"}, "loop"), ({"createdAfter": "soon"}, "createdAfter"),
                          ({"stepStatus": "odd"}, "stepStatus")]:  # fmt: skip
        response = dry_run(api, filter)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == field
    unknown = dry_run(api, {"colour": "red"})
    assert unknown.status_code == 422
    assert unknown.json()["error"]["details"][0]["field"] == "filter.colour"
    no_action = api.post("/api/v1/runs/bulk", json={"action": "delete", "filter": {}})
    assert no_action.status_code == 422
    assert no_action.json()["error"]["details"][0]["field"] == "action"
    bad_json = api.post(
        "/api/v1/runs/bulk", content=b"{", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert not BulkJob.objects.exists()


def test_trigger_tokens_are_refused_and_another_orgs_job_is_404(live_server, api, org, other_org,
                                                                loop):  # fmt: skip
    trigger = make_token(org, scope=TokenScope.TRIGGER, name="trigger only")
    headers = {"Authorization": f"Bearer {trigger}"}
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    refused = [
        api.post("/api/v1/runs/bulk", json={"action": "cancel", "filter": {}}, headers=headers),
        api.get(f"/api/v1/bulk/{job.pk}", headers=headers),
        api.post(f"/api/v1/bulk/{job.pk}/abort", headers=headers),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    theirs = {"Authorization": f"Bearer {make_token(other_org)}"}
    assert api.get(f"/api/v1/bulk/{job.pk}", headers=theirs).status_code == 404
    assert api.post(f"/api/v1/bulk/{job.pk}/abort", headers=theirs).status_code == 404
    assert api.get(f"/api/v1/bulk/{job.pk}").status_code == 200


# --- Real jobs with the worker -----------------------------------------------------------------


def test_bulk_cancel_through_the_worker_cancels_exactly_the_matching_runs(
    worker, api, org, other_org, loop, monkeypatch
):
    # Small chunks, so that the job goes through several (the job keeps its chunk size).
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 7)
    matching = waiting(loop, 24) + list(RunFactory.create_batch(3, loop=loop, status="pending"))
    running = RunFactory(loop=loop, status="running", execution_id="exec-1",
                         started_at=timezone.now())  # fmt: skip
    matching.append(running)
    ended = RunFactory.create_batch(3, loop=loop, status="succeeded")
    theirs = waiting(LoopFactory(organization=other_org, slug="theirs"), 4)
    filter = {"status": "pending,running,waiting"}
    assert dry_run(api, filter).json()["data"]["count"] == 28

    response = api.post("/api/v1/runs/bulk", json={"action": "cancel", "filter": filter})
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["id"].startswith("bulk_")
    assert {k: data[k] for k in ("action", "total")} == {"action": "cancel", "total": 28}
    assert data["status"] in ("running", "done")
    late = waiting(loop, 1)  # made after the job: not one of its runs

    def finished():
        body = api.get(f"/api/v1/bulk/{data['id']}").json()["data"]
        return body if body["status"] == "done" else None

    body = wait_until(finished, timeout=60)
    assert (body["total"], body["done"], body["failed"]) == (28, 28, 0)
    assert set(statuses(matching)) == {"cancelled"}
    assert set(statuses(ended)) == {"succeeded"}
    assert set(statuses(theirs)) == {"waiting"}
    assert statuses(late) == ["waiting"]
    steps = Step.objects.filter(run__in=matching)
    assert [(s.status, s.error) for s in steps] == [("failed", CANCELLED_STEP_ERROR)] * 24
    assert not Timer.objects.filter(target__in=[s.pk for s in steps]).exists()
    assert Timer.objects.filter(target__in=Step.objects.filter(run__in=theirs + late)).count() == 5
    assert not Owner(running.pk, "exec-1").holds()  # its execution stops at its next step
    assert not BulkJobItem.objects.exists()
    job = BulkJob.objects.get(pk=data["id"])
    assert job.cursor > 0
    assert job.completed_at is not None
    # Audited once for the job, not once per run.
    assert list(AuditEvent.objects.values_list("action", "object_id")) == [("runs.bulk", job.pk)]


def test_bulk_resume_and_restart_through_the_worker(worker, api, org, loop, monkeypatch):
    monkeypatch.setitem(bulk.CHUNK_SIZES, "resume", 2)
    failed = RunFactory.create_batch(3, loop=loop, status="failed", error_message="boom")
    succeeded = RunFactory.create_batch(2, loop=loop, status="succeeded")
    resume = api.post("/api/v1/runs/bulk", json={"action": "resume", "filter": {}}).json()["data"]
    wait_until(lambda: BulkJob.objects.get(pk=resume["id"]).status == "done", timeout=60)
    job = BulkJob.objects.get(pk=resume["id"])
    assert (job.total, job.done, job.failed) == (5, 3, 2)
    assert job.failures == {"not_resumable": 2}
    # Resumed once each (the worker may have executed them since: attempt says how often).
    assert [r.attempt for r in Run.objects.filter(pk__in=[r.pk for r in failed])] == [2, 2, 2]

    restart = api.post("/api/v1/runs/bulk", json={
        "action": "restart", "filter": {"status": "succeeded"}}).json()["data"]  # fmt: skip
    wait_until(lambda: BulkJob.objects.get(pk=restart["id"]).status == "done", timeout=60)
    job = BulkJob.objects.get(pk=restart["id"])
    assert job.total == job.done == Run.objects.filter(restarted_from__isnull=False).count()
    restarted = Run.objects.filter(restarted_from__in=succeeded)
    assert restarted.count() == 2
    assert {r.triggered_by_token_id for r in restarted} == {job.created_by_token_id}
    assert job.created_by_token_id is not None
    # Audited once per job, not once per run resumed or restarted.
    assert sorted(AuditEvent.objects.values_list("action", flat=True)) == ["runs.bulk"] * 2


# --- Abort, idempotency, recovery (chunks done in this process, as a task does them) ----------


def test_abort_stops_the_job_at_its_next_chunk(api, org, loop, monkeypatch):
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 4)
    runs = waiting(loop, 10)
    data = api.post("/api/v1/runs/bulk", json={"action": "cancel", "filter": {}}).json()["data"]
    job = BulkJob.objects.get(pk=data["id"])
    assert bulk.bulk_job_chunk(job_id=job.pk, token=job.task_token) is True
    assert statuses(runs).count("cancelled") == 4

    response = api.post(f"/api/v1/bulk/{job.pk}/abort")
    assert response.status_code == 200, response.text
    assert {k: response.json()["data"][k] for k in ("status", "total", "done", "failed")} == {
        "status": "aborted", "total": 10, "done": 4, "failed": 0,
    }  # fmt: skip
    # The task's next chunk sees it and stops; nothing more is cancelled.
    assert bulk.bulk_job_chunk(job_id=job.pk, token=job.task_token) is False
    assert statuses(runs).count("cancelled") == 4
    assert statuses(runs).count("waiting") == 6
    assert not BulkJobItem.objects.filter(job_id=job.pk).exists()
    assert BulkJob.objects.get(pk=job.pk).status == "aborted"
    again = api.post(f"/api/v1/bulk/{job.pk}/abort")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "bulk_ended"
    audit = {e.action: e for e in AuditEvent.objects.all()}
    assert set(audit) == {"runs.bulk", "runs.bulk_abort"}
    assert audit["runs.bulk"].details == {"action": "cancel", "filter": {}, "total": 10}
    assert audit["runs.bulk_abort"].details == {
        "action": "cancel",
        "total": 10,
        "done": 4,
        "failed": 0,
    }
    assert audit["runs.bulk_abort"].actor_type == "token"


def test_a_chunk_that_fails_midway_is_done_again_without_acting_twice(org, loop, monkeypatch):
    """A chunk is one transaction: a worker that dies (here: a failure after the runs were
    resumed, before the chunk was recorded) leaves nothing of it, and the chunk done again
    resumes each run once."""
    monkeypatch.setitem(bulk.CHUNK_SIZES, "resume", 3)
    runs = RunFactory.create_batch(5, loop=loop, status="failed", error_message="boom")
    job = bulk.bulk_job_create(organization=org, action="resume", filter={}, actor=ACTOR)
    real_save = BulkJob.save

    def dies(self, *args, **kwargs):
        raise DatabaseError("the worker died")

    monkeypatch.setattr(BulkJob, "save", dies)
    with pytest.raises(DatabaseError):
        bulk.bulk_job_chunk(job_id=job.pk, token=job.task_token)
    assert set(statuses(runs)) == {"failed"}  # rolled back with the chunk
    monkeypatch.setattr(BulkJob, "save", real_save)

    job = work_through(job.pk)
    assert (job.status, job.total, job.done, job.failed) == ("done", 5, 5, 0)
    assert [r.attempt for r in Run.objects.filter(pk__in=[r.pk for r in runs])] == [2] * 5
    # The same task delivered again, and a task the job no longer names: nothing happens.
    assert bulk.bulk_job_chunk(job_id=job.pk, token=job.task_token) is False
    assert [r.attempt for r in Run.objects.filter(pk__in=[r.pk for r in runs])] == [2] * 5


def test_a_chunk_whose_connection_dies_in_the_worker_is_done_again_once(
    worker, api, org, loop, monkeypatch
):
    """The real worker's chunk dies midway (its database connection is ended while it waits
    for a run's lock, after it resumed the runs before that one): the database rolls it back,
    the task makes its connection anew and does the chunk again; each run is resumed once."""
    if connection.vendor != "postgresql":
        pytest.skip("ends a PostgreSQL backend")
    monkeypatch.setitem(bulk.CHUNK_SIZES, "resume", 5)
    runs = RunFactory.create_batch(12, loop=loop, status="failed", error_message="boom")
    first = sorted(runs, key=lambda r: (r.created_at, r.pk))[:5]
    dsn = database_url_for_subprocess()
    with psycopg.connect(dsn) as blocker, psycopg.connect(dsn, autocommit=True) as admin:
        blocker.execute("SELECT 1 FROM runs_run WHERE id = %s FOR UPDATE", [first[2].pk])
        data = api.post("/api/v1/runs/bulk", json={"action": "resume", "filter": {}}).json()
        job_id = data["data"]["id"]

        def stuck() -> list[int]:
            return [row[0] for row in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()]  # fmt: skip

        pids = wait_until(stuck, timeout=30)
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
        blocker.rollback()
    wait_until(lambda: BulkJob.objects.get(pk=job_id).status == "done", timeout=60)
    job = BulkJob.objects.get(pk=job_id)
    assert (job.total, job.done, job.failed) == (12, 12, 0)
    assert [r.attempt for r in Run.objects.filter(pk__in=[r.pk for r in runs])] == [2] * 12


def test_a_task_delivered_twice_does_each_chunk_once(org, loop, monkeypatch):
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 3)
    runs = waiting(loop, 8)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    token = job.task_token
    # Two copies of the task share the job's chunks: each chunk is done by one of them.
    assert bulk.bulk_job_chunk(job_id=job.pk, token=token)
    assert bulk.bulk_job_chunk(job_id=job.pk, token=token)
    job.refresh_from_db()
    assert (job.done, statuses(runs).count("cancelled")) == (6, 6)
    # One of them hands on: a new task is named and queued; the other copy stops.
    assert bulk.bulk_job_chunk(job_id=job.pk, token=token, hand_on=True) is False
    job.refresh_from_db()
    assert job.status == "done"  # the last chunk (2 runs) finished it
    assert (job.total, job.done, job.failed) == (8, 8, 0)
    assert bulk.bulk_job_chunk(job_id=job.pk, token=token) is False
    assert set(statuses(runs)) == {"cancelled"}


def test_a_task_hands_on_after_its_time_and_the_old_one_stops(org, loop, monkeypatch):
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 2)
    monkeypatch.setattr(bulk, "TASK_SECONDS", 0)
    runs = waiting(loop, 5)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    first = job.task_token
    queued = [SignedPackage.loads(q.payload) for q in OrmQ.objects.all()]
    assert [(t["func"], t["args"]) for t in queued] == [(dispatch.BULK_TASK, (job.pk, first))]
    OrmQ.objects.all().delete()

    bulk.bulk_job_work(job_id=job.pk, token=first)  # one chunk, then hands on
    job.refresh_from_db()
    assert (job.done, job.status) == (2, "running")
    assert job.task_token != first
    queued = [SignedPackage.loads(q.payload) for q in OrmQ.objects.all()]
    assert [t["args"] for t in queued] == [(job.pk, job.task_token)]
    bulk.bulk_job_work(job_id=job.pk, token=first)  # the old task, delivered again
    job.refresh_from_db()
    assert job.done == 2
    while job.is_running:
        bulk.bulk_job_work(job_id=job.pk, token=job.task_token)
        job.refresh_from_db()
    assert (job.total, job.done) == (5, 5)
    assert set(statuses(runs)) == {"cancelled"}


def test_a_stalled_job_gets_a_new_task_when_it_is_read(api, org, loop):
    waiting(loop, 2)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    OrmQ.objects.all().delete()  # its task was lost with its worker
    assert api.get(f"/api/v1/bulk/{job.pk}").json()["data"]["status"] == "running"
    assert not OrmQ.objects.exists()  # not stalled yet
    BulkJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert api.get(f"/api/v1/bulk/{job.pk}").status_code == 200
    job.refresh_from_db()
    queued = [SignedPackage.loads(q.payload)["args"] for q in OrmQ.objects.all()]
    assert queued == [(job.pk, job.task_token)]
    assert work_through(job.pk).done == 2


def test_the_workers_clock_revives_a_stalled_job_nobody_looks_at(org, loop, monkeypatch):
    waiting(loop, 2)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    OrmQ.objects.all().delete()  # its task was lost with its worker
    monkeypatch.setattr(clock, "_revived_at", [0.0])
    clock.round_()
    assert not OrmQ.objects.exists()  # not stalled yet
    BulkJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    monkeypatch.setattr(clock, "_revived_at", [0.0])
    clock.round_()
    job.refresh_from_db()
    queued = [SignedPackage.loads(q.payload)["args"] for q in OrmQ.objects.all()]
    assert (job.pk, job.task_token) in queued
    assert work_through(job.pk).done == 2


# --- What each action does to the runs ------------------------------------------------------


def test_cancel_ends_steps_scans_and_children_and_counts_ended_runs_as_failed(org, loop):
    parent = waiting(loop, 1)[0]
    parent_step = Step.objects.create(
        run=parent, order=1, key="Child#1", name="Child", kind="child", status="waiting"
    )
    child = RunFactory(loop=loop, status="pending", parent_step=parent_step, trigger_type="system")
    scan_run = RunFactory(loop=loop, status="waiting", pending={"kind": "scan"})
    scan_step = Step.objects.create(
        run=scan_run, order=0, key="Scan#1", name="Scan", kind="scan", status="waiting"
    )
    scan = ScanRequest.objects.create(organization=org, run=scan_run, step=scan_step)
    ended = RunFactory(loop=loop, status="succeeded")
    webhook_create(organization=org, url="https://example.com/hook", events=["run.cancelled"])
    job = bulk.bulk_job_create(
        organization=org, action="cancel", filter={"triggerType": "api_token"}, actor=ACTOR
    )
    job = work_through(job.pk)
    assert (job.total, job.done, job.failed) == (3, 2, 1)
    assert job.failures == {"run_ended": 1}
    assert statuses([parent, child, scan_run, ended]).count("cancelled") == 3
    scan.refresh_from_db()
    assert scan.status == "expired"
    parent.refresh_from_db()
    assert 9_000 <= parent.duration_ms <= 60_000  # started 10 s ago
    assert Run.objects.get(pk=child.pk).duration_ms == 0  # never started
    # One run.cancelled delivery per run cancelled (the child's too), none for the ended run.
    delivered = WebhookDelivery.objects.values_list("run_id", "event")
    assert sorted(delivered) == sorted((r.pk, "run.cancelled") for r in (parent, child, scan_run))


def test_a_child_cancelled_with_its_parent_counts_once_as_done(org, loop, monkeypatch):
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 1)
    parent = waiting(loop, 1)[0]
    step = Step.objects.create(
        run=parent, order=1, key="Child#1", name="Child", kind="child", status="waiting"
    )
    child = RunFactory(loop=loop, status="running", parent_step=step, trigger_type="system")
    grandchild_step = Step.objects.create(
        run=child, order=0, key="Child#1", name="Child", kind="child", status="waiting"
    )
    grandchild = RunFactory(loop=loop, status="pending", parent_step=grandchild_step)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    assert job.total == 3
    # The first chunk (the oldest run, the parent) cancels the two below it as well.
    assert bulk.bulk_job_chunk(job_id=job.pk, token=job.task_token)
    assert statuses([parent, child, grandchild]) == ["cancelled"] * 3
    job = work_through(job.pk)
    assert (job.total, job.done, job.failed) == (3, 3, 0)


def test_restart_leaves_runs_still_going(org, loop, owner):
    RunFactory(loop=loop, status="succeeded", input={"n": 1})
    RunFactory(loop=loop, status="running")
    actor = Actor.of_user(owner)
    job = work_through(
        bulk.bulk_job_create(organization=org, action="restart", filter={}, actor=actor).pk
    )
    assert (job.done, job.failed, job.failures) == (1, 1, {"run_not_ended": 1})
    new = Run.objects.get(restarted_from__isnull=False)
    assert (new.input, new.trigger_type, new.triggered_by_user) == ({"n": 1}, "user", owner)


def test_nothing_matching_is_a_job_already_done(org, loop):
    job = bulk.bulk_job_create(
        organization=org, action="cancel", filter={"status": "failed"}, actor=ACTOR
    )
    assert (job.status, job.total) == ("done", 0)
    assert not OrmQ.objects.exists()
    assert AuditEvent.objects.get().details["total"] == 0


def test_an_organization_runs_one_bulk_job_at_a_time_and_another_is_not_held(
    api, org, loop, other_org
):
    """A running job holds a worker for a few seconds at a time: an organization's jobs run
    one at a time (LOOPS_MAX_BULK_JOBS_PER_ORG); another organization's are its own."""
    waiting(loop, 3)
    first = api.post("/api/v1/runs/bulk", json={"action": "cancel", "filter": {}})
    assert first.status_code == 202, first.text
    second = api.post("/api/v1/runs/bulk", json={"action": "resume", "filter": {}})
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "too_many_running_bulk_jobs"
    assert "wait for one to finish" in second.json()["error"]["message"]
    assert BulkJob.objects.filter(organization=org).count() == 1
    waiting(LoopFactory(organization=other_org), 1)
    theirs = bulk.bulk_job_create(organization=other_org, action="cancel", filter={}, actor=ACTOR)
    assert theirs.status == "running"


def test_the_bulk_jobs_tasks_keep_no_turn_out_of_the_workers_queue(org, loop, other_org, settings):
    """Each running job has a task waiting in the workers' queue, beside the turns that start
    runs: with as many of them as there are workers, a run must still get a turn."""
    settings.LOOPS_WORKERS = 2
    for organization in (org, other_org):
        waiting(LoopFactory(organization=organization), 2)
        bulk.bulk_job_create(organization=organization, action="cancel", filter={}, actor=ACTOR)
    assert OrmQ.objects.count() == 2  # the jobs' tasks
    dispatch.wake_workers()  # a run was triggered
    assert OrmQ.objects.count() == 3
    dispatch.wake_workers()
    dispatch.wake_workers()
    assert OrmQ.objects.count() == 4  # turns_wanted() turns wait, no more


# --- Pages ------------------------------------------------------------------------------------


@pytest.fixture
def editor_client(client, member):
    client.force_login(member)
    return client


def test_the_page_previews_the_count_then_starts_the_job(editor_client, org, loop, member):
    waiting(loop, 3)
    RunFactory(loop=loop, status="succeeded")
    listed = editor_client.get(reverse("runs:list"), {"status": "waiting"}).content.decode()
    assert 'id="bulk-control"' in listed
    preview = editor_client.get(
        reverse("runs:bulk_preview"), {"action": "cancel", "status": "waiting"}
    )
    page = preview.content.decode()
    assert "Cancel 3 matching runs?" in page
    assert 'data-confirm="Cancel 3 matching runs? This cannot be undone."' in page
    assert "Runs with status waiting" in page
    started = editor_client.post(
        reverse("runs:bulk_start"), {"action": "cancel", "status": "waiting"}
    )
    job = BulkJob.objects.get()
    assert started.status_code == 302
    assert started["Location"] == job.get_absolute_url()
    assert (job.total, job.filter, job.created_by_user) == (3, {"status": "waiting"}, member)
    event = AuditEvent.objects.get(action="runs.bulk")
    assert (event.actor_type, event.actor_name) == ("user", "mo")
    work_through(job.pk)
    page = editor_client.get(job.get_absolute_url()).content.decode()
    assert 'id="bulk-done">3<' in page
    assert "badge-succeeded" in page
    assert "Abort" not in page


def test_a_loops_runs_list_bulk_acts_on_that_loop_only(editor_client, org, loop):
    other = LoopFactory(organization=org, slug="other")
    waiting(loop, 2)
    waiting(other, 3)
    listed = editor_client.get(reverse("loops:runs", args=[loop.slug])).content.decode()
    assert f'name="loop" value="{loop.slug}"' in listed
    preview = editor_client.get(reverse("runs:bulk_preview"), {"action": "cancel",
                                                               "loop": loop.slug})  # fmt: skip
    assert "Cancel 2 matching runs?" in preview.content.decode()
    editor_client.post(reverse("runs:bulk_start"), {"action": "cancel", "loop": loop.slug})
    job = work_through(BulkJob.objects.get().pk)
    assert job.filter == {"loop": loop.slug}
    assert Run.objects.filter(loop=other, status="waiting").count() == 3


def test_the_job_page_polls_while_running_and_aborts(editor_client, org, loop):
    waiting(loop, 2)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    page = editor_client.get(job.get_absolute_url()).content.decode()
    assert 'hx-swap="morph:outerHTML"' in page
    assert "Abort" in page
    live = editor_client.get(job.get_absolute_url(), headers={
        "HX-Request": "true", "HX-Target": "bulk-live"})  # fmt: skip
    assert live.status_code == 200
    token = live.content.decode().split("since=")[1].split('"')[0]
    hx = {"HX-Request": "true", "HX-Target": "bulk-live"}
    unchanged = editor_client.get(f"{job.get_absolute_url()}?since={token}", headers=hx)
    assert unchanged.status_code == 204
    aborted = editor_client.post(reverse("runs:bulk_abort", args=[job.pk]), follow=True)
    assert "Aborted after 0 of 2 runs" in aborted.content.decode()
    ended = editor_client.get(job.get_absolute_url(), headers={
        "HX-Request": "true", "HX-Target": "bulk-live"})  # fmt: skip
    assert ended.status_code == 286  # htmx stops polling
    assert "hx-get" not in ended.content.decode()


def test_viewers_cannot_start_or_abort_and_other_orgs_jobs_are_404(client, org, other_org, loop,
                                                                   outsider):  # fmt: skip
    waiting(loop, 1)
    job = bulk.bulk_job_create(organization=org, action="cancel", filter={}, actor=ACTOR)
    client.force_login(MembershipFactory(organization=org, role=Role.VIEWER).user)
    assert 'id="bulk-control"' not in client.get(reverse("runs:list")).content.decode()
    assert client.get(reverse("runs:bulk_preview"), {"action": "cancel"}).status_code == 403
    assert client.post(reverse("runs:bulk_start"), {"action": "cancel"}).status_code == 403
    assert client.post(reverse("runs:bulk_abort", args=[job.pk])).status_code == 403
    page = client.get(job.get_absolute_url())
    assert page.status_code == 200  # a viewer follows it, without Abort
    assert "Abort" not in page.content.decode()
    client.force_login(outsider)
    assert client.get(job.get_absolute_url()).status_code == 404
    assert client.post(reverse("runs:bulk_abort", args=[job.pk])).status_code == 404
    assert BulkJob.objects.get().status == "running"
    assert Run.objects.get().status == "waiting"


def test_the_preview_names_a_bad_filter_or_no_match(editor_client, loop):
    bad = editor_client.get(reverse("runs:bulk_preview"), {"action": "cancel", "start": "nope"})
    assert "Some filters are not valid: start" in bad.content.decode()
    none = editor_client.get(reverse("runs:bulk_preview"), {"action": "resume"})
    assert "No runs match these filters." in none.content.decode()
    assert not BulkJob.objects.exists()
