"""The Redis broker of django-q2, as production may run it (REDIS_URL set: settings put
Q_CLUSTER["redis"] instead of the ORM broker), through HTTP and a real `qcluster` process: a
triggered run succeeds, a sleep ends on time without holding a worker, a batch drains, and a run
queued while the ORM broker carried the turns is taken up once Redis does.

Each test starts a cluster of its own with REDIS_URL on a Redis database of its own (db 9 unless
LOOPS_TEST_REDIS_URL says otherwise) and a queue of its own, and points this process's dispatch
(runs.dispatch.broker and queue_key) at the same Redis queue, so that what the live server
triggers is pushed to Redis after commit, as it is in production. Only this queue's key is
deleted, before and after.
In CI (CI set) an unreachable Redis fails the tests; elsewhere they skip."""

import os

import pytest
import redis
from django_q.brokers.redis_broker import Redis

from runs.models import Run, RunStatus
from tests.conftest import Cluster, send_work_to, wait_until
from tests.engine_helpers import deploy, program
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

REDIS_URL = os.environ.get("LOOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
QUEUE = f"redis-e2e-{os.getpid()}"  # a session of its own: no other cluster takes its turns


class RedisBroker(Redis):
    """django-q2's Redis broker on REDIS_URL, whatever this process's settings say (the tests
    run with the ORM broker); it counts the turns this process pushes."""

    pushed = 0

    @staticmethod
    def get_connection(list_key: str | None = None) -> redis.Redis:
        return redis.from_url(REDIS_URL, socket_connect_timeout=2)

    def enqueue(self, task):
        self.pushed += 1
        return super().enqueue(task)


def redis_or_skip() -> redis.Redis:
    connection = redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.RedisError as error:
        message = f"Redis is not reachable at {REDIS_URL}: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI Redis is always there: a missing one fails, never skips
        pytest.skip(message)
    return connection


@pytest.fixture
def redis_cluster(transactional_db, monkeypatch):
    """A `qcluster` on the Redis broker (REDIS_URL, LOOPS_QUEUE), and this process's dispatch
    on the same queue. Its runs left pending are cancelled and the cluster stopped (gracefully:
    the runs in hand end) before the test's data is flushed."""
    connection = redis_or_skip()
    broker = RedisBroker(list_key=QUEUE)
    connection.delete(broker.list_key)
    send_work_to(monkeypatch, QUEUE, broker)
    cluster = Cluster({"REDIS_URL": REDIS_URL, "LOOPS_QUEUE": QUEUE})
    cluster.broker = broker
    try:
        yield cluster
        assert cluster.proc.poll() is None, "the qcluster process died"
    finally:
        Run.objects.filter(status=RunStatus.PENDING).update(status=RunStatus.CANCELLED)
        cluster.stop()
        connection.delete(broker.list_key)
        connection.close()


def ended(api, run_id: str) -> dict | None:
    run = api.get(f"/api/v1/runs/{run_id}").json()["data"]
    return run if run["status"] in ("succeeded", "failed", "cancelled") else None


def test_a_run_triggered_through_the_api_succeeds_on_the_redis_broker(redis_cluster, api, org):
    doubler = deploy(
        org, program('return step.do("Double", lambda: event.body["n"] * 2)'), slug="doubler"
    )

    response = api.post(f"/api/loop/{org.slug}/{doubler.slug}", json={"n": 21})

    assert response.status_code == 202
    run_id = response.json()["runId"]
    run = wait_until(lambda: ended(api, run_id), timeout=60)
    assert (run["status"], run["output"]) == ("succeeded", 42)
    assert [(s["name"], s["status"], s["output"]) for s in run["steps"]] == [
        ("Double", "succeeded", 42)
    ]
    # The run waited in the Redis broker's queue; this process pushed its turn there, and the
    # cluster took it (a turn left in Redis would mean the cluster reads another queue).
    assert Run.objects.get(pk=run_id).queue == QUEUE
    assert redis_cluster.broker.pushed >= 1
    wait_until(lambda: redis_cluster.broker.queue_size() == 0, timeout=10)


def test_a_sleep_ends_within_a_second_of_its_time_on_the_redis_broker(redis_cluster, api, org):
    sleeper = deploy(org, program('step.sleep("Nap", 2)\nreturn "rested"'), slug="sleeper")

    run_id = api.post(f"/api/loop/{org.slug}/{sleeper.slug}", json={}).json()["runId"]

    run = wait_until(lambda: ended(api, run_id), timeout=60)
    assert (run["status"], run["output"]) == ("succeeded", "rested")
    (nap,) = (s for s in run["steps"] if s["name"] == "Nap")
    assert nap["status"] == "succeeded"
    nap = Run.objects.get(pk=run_id).steps.get(name="Nap")
    lateness = (nap.finished_at - nap.started_at).total_seconds() - 2
    assert 0 <= lateness < 1, lateness
    assert Run.objects.get(pk=run_id).executions == 2  # no worker held through the sleep


def test_a_batch_of_50_drains_on_the_redis_broker(redis_cluster, api, org):
    tripler = deploy(
        org, program('return step.do("Triple", lambda: event.body["n"] * 3)'), slug="tripler"
    )

    response = api.post(
        f"/api/v1/loops/{tripler.slug}/runs", json={"inputs": [{"n": n} for n in range(50)]}
    )

    assert response.status_code == 202, response.text
    batch_id = response.json()["data"]["batchId"]

    def drained() -> dict | None:
        counts = api.get(f"/api/v1/batches/{batch_id}").json()["data"]["counts"]
        return counts if counts["succeeded"] == 50 else None

    counts = wait_until(drained, timeout=60, interval=0.2)
    assert {status: n for status, n in counts.items() if n} == {"succeeded": 50}
    listed = api.get("/api/v1/runs", params={"batch": batch_id, "limit": 100}).json()["data"]
    assert sorted(r["output"] for r in listed) == [3 * n for n in range(50)]


def test_a_run_queued_under_the_orm_broker_is_taken_up_once_redis_carries_the_turns(
    redis_cluster, api, org, loop
):
    # Queued while the ORM broker carried the turns: its queue is the cluster's name, which
    # does not change with the broker (a turn left in the ORM broker's table is not needed).
    run = RunFactory(loop=loop, status=RunStatus.PENDING, input={"name": "Ada"}, queue=QUEUE)
    finished = wait_until(lambda: ended(api, run.pk), timeout=60)
    assert (finished["status"], finished["output"]) == ("succeeded", {"greeting": "Hello, Ada!"})
