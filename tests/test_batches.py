"""Batches: runs created in bulk and pending before the answer, with turns queued for the
workers; executed."""

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django_q.models import OrmQ
from django_q.signing import SignedPackage
from ulid import ULID

from accounts.models import ApiToken
from loops.models import Loop
from loops_project import ids
from loops_project.errors import Invalid, TooLarge
from runs import dispatch, tasks
from runs.batches import new_run_ids
from runs.models import Batch, Run, RunStatus, TriggerType
from runs.services import run_trigger, run_trigger_batch
from tests.conftest import wait_until
from tests.factories import RunFactory


def queued_turns() -> int:
    """How many turns to work are queued, decoded with django-q2's own signing."""
    tasks = [SignedPackage.loads(p) for p in OrmQ.objects.values_list("payload", flat=True)]
    assert all(t["func"] == dispatch.WORK_TASK and not t["args"] for t in tasks), tasks
    return len(tasks)


def fresh(loop) -> Loop:
    return Loop.objects.select_related("active_version").get(pk=loop.pk)


@pytest.mark.django_db
def test_a_batch_of_1000_inputs_creates_1000_pending_runs_all_queued(loop, token, org):
    api_token = ApiToken.objects.get(organization=org)
    inputs = [{"name": f"person {i}", "i": i} for i in range(1000)]

    batch = run_trigger_batch(
        loop=fresh(loop), inputs=inputs, trigger_type=TriggerType.API_TOKEN, token=api_token
    )

    assert batch.count == 1000
    runs = Run.objects.filter(batch=batch)
    assert runs.count() == 1000
    assert set(runs.values_list("status", flat=True)) == {RunStatus.PENDING}
    assert sorted(r["i"] for r in runs.values_list("input", flat=True)) == list(range(1000))
    run = runs.get(input__i=7)
    assert run.input == {"name": "person 7", "i": 7}
    assert run.version_id == fresh(loop).active_version_id
    assert run.organization_id == org.pk
    assert run.trigger_type == TriggerType.API_TOKEN
    assert run.triggered_by_token_id == api_token.pk
    assert run.mode == "live"
    assert set(runs.values_list("queue", flat=True)) == {dispatch.queue_key()}
    # The runs table is the queue: workers get turns (one each), not a task per run.
    assert queued_turns() == dispatch.turns_wanted()


@pytest.mark.django_db
def test_a_batch_with_an_input_over_the_limit_creates_nothing(loop, settings):
    settings.LOOPS_MAX_INPUT_BYTES = 100
    inputs = [{"name": "ok"}, {"name": "x" * 200}]

    with pytest.raises(TooLarge) as error:
        run_trigger_batch(loop=fresh(loop), inputs=inputs, trigger_type=TriggerType.USER)

    assert error.value.details == {"field": "inputs[1]"}
    assert not Run.objects.exists()
    assert not Batch.objects.exists()
    assert not OrmQ.objects.exists()


@pytest.mark.django_db
def test_a_batch_with_a_nan_input_is_refused_not_a_server_error(loop):
    with pytest.raises(Invalid) as error:
        run_trigger_batch(loop=fresh(loop), inputs=[1, float("nan")], trigger_type="user")

    assert error.value.details == {"field": "inputs[1]"}
    assert not Run.objects.exists()


# These tests commit nothing (the worker cluster of another test may be running: it must not
# take these runs), except the last one, which is about that worker.


@pytest.mark.django_db
def test_a_batch_of_100000_through_the_api_answers_202_with_its_runs_pending_and_queued(
    token, loop
):
    """Nothing is committed here, so a worker cluster left by another test cannot take them."""
    inputs = list(range(100_000))
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    response = client.post(
        f"/api/v1/loops/{loop.slug}/runs", {"inputs": inputs}, content_type="application/json"
    )

    assert response.status_code == 202, response.content
    data = response.json()["data"]
    assert data["count"] == 100_000
    counts = client.get(f"/api/v1/batches/{data['batchId']}").json()["data"]["counts"]
    assert counts["pending"] == 100_000
    assert queued_turns() == dispatch.turns_wanted()


@pytest.mark.django_db
def test_a_turn_over_its_time_hands_the_turn_on(loop, settings):
    settings.LOOPS_TURN_SECONDS = 0
    loop = fresh(loop)
    runs = [RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": n}) for n in "ABC"]
    run_ids = [r.pk for r in runs]

    done = tasks.work()

    assert done == 1
    assert Run.objects.get(pk=run_ids[0]).output == {"greeting": "Hello, A!"}
    assert list(Run.objects.filter(pk__in=run_ids[1:]).values_list("status", flat=True)) == [
        RunStatus.PENDING,
        RunStatus.PENDING,
    ]
    assert queued_turns() == 1


@pytest.mark.django_db
def test_a_turn_executes_runs_until_none_is_left(loop):
    loop = fresh(loop)
    for name in "ABC":
        RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": name})
    assert tasks.work() == 3
    assert set(Run.objects.values_list("status", flat=True)) == {RunStatus.SUCCEEDED}
    assert tasks.work() == 0


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_20_inputs_all_succeed_on_the_real_worker(worker, loop):
    names = [f"Person {i}" for i in range(20)]
    batch = run_trigger_batch(loop=fresh(loop), inputs=[{"name": n} for n in names],
                              trigger_type=TriggerType.USER)  # fmt: skip
    runs = Run.objects.filter(batch=batch)

    wait_until(lambda: runs.filter(status=RunStatus.SUCCEEDED).count() == 20, timeout=120)

    assert sorted(r["greeting"] for r in runs.values_list("output", flat=True)) == sorted(
        f"Hello, {n}!" for n in names
    )


def test_batch_run_ids_are_time_sortable_ulids_like_the_apps_ids():
    before = ids.run_id()
    made = new_run_ids(1000)
    after = ids.run_id()

    assert len(set(made)) == 1000
    assert made == sorted(made), "a batch's ids increase in input order"
    for run_id in made:
        assert run_id.startswith("run_")
        assert len(run_id) == len(before)
        assert ULID.from_str(run_id[4:].upper())  # a valid ULID
        assert before[:14] <= run_id[:14] <= after[:14], "the time part orders like ids.run_id"


@pytest.mark.django_db
def test_a_single_trigger_queues_a_turn_in_the_same_transaction(loop):
    run_trigger(loop=fresh(loop), input={"name": "Ana"}, trigger_type=TriggerType.USER)
    assert queued_turns() == 1
    # More triggers queue turns only until every worker has one.
    for name in "BCDEF":
        run_trigger(loop=fresh(loop), input={"name": name}, trigger_type=TriggerType.USER)
    assert queued_turns() == dispatch.turns_wanted()


@pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
    reason="PostgreSQL's planner statistics (SQLite has no prepared plans to keep)",
)
@pytest.mark.django_db(transaction=True)
def test_a_batch_that_outgrows_the_runs_tables_statistics_has_them_gathered(loop):
    """Workers' prepared statements keep plans made for the table's known size: a batch that
    outgrows it has the statistics gathered at once (bench (d): 35 -> 125 runs/s meanwhile)."""
    known = """SELECT reltuples FROM pg_class WHERE oid = 'runs_run'::regclass"""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_run")  # empty
        run_trigger_batch(loop=loop, inputs=[{}] * 20, trigger_type=TriggerType.USER)
        cursor.execute(known)
        assert cursor.fetchone()[0] == 0  # a small batch leaves them to autovacuum
        run_trigger_batch(loop=loop, inputs=[{}] * 1500, trigger_type=TriggerType.USER)
        cursor.execute(known)
        assert cursor.fetchone()[0] == 1520
