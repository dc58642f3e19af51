"""Triggers over real HTTP: one input, batches, idempotency keys and live mode."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone
from django_q.models import OrmQ

from loops_project.slots import slot
from runs import dispatch, live
from runs.models import Batch, Run, RunStatus
from tests.factories import LoopFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_CODE = """\
class HealthLoop(Loop):
    def run(self, event, step):
        return step.wait_for_event("Go", "go")
"""


def assert_queued(runs) -> None:
    """Every run is pending in this process's queue (or a worker already took it), and a turn
    to work is queued for the workers."""
    for run in runs:
        run.refresh_from_db()
        assert run.status != RunStatus.PENDING or run.queue == dispatch.queue_key(), run.pk
    assert {e.task["func"] for e in OrmQ.objects.all()} == {dispatch.WORK_TASK}


def test_one_input_answers_202_with_the_pending_run(api, loop):
    response = api.post("/api/v1/loops/greeting/runs", json={"input": {"name": "Ana"}})
    assert response.status_code == 202
    data = response.json()["data"]
    run = Run.objects.get()
    assert data["id"] == run.pk
    assert data["input"] == {"name": "Ana"}
    assert data["status"] in ("pending", "running", "succeeded")  # a worker may already run it
    assert data["version"] == 1
    assert data["triggerType"] == "api_token"
    assert_queued([run])


def test_trigger_url_takes_any_json_value_as_input(api, loop):
    for body in ([1, 2, 3], "text", 42, None):
        response = api.post(
            "/api/loop/acme/greeting", content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert response.status_code == 202
        run = Run.objects.get(pk=response.json()["runId"])
        assert run.input == body
        assert response.json()["workflowInstanceId"] == run.task_id
    response = api.post("/api/loop/acme/greeting")  # no body at all: an empty object
    assert Run.objects.get(pk=response.json()["runId"]).input == {}


def test_api_trigger_without_input_gives_an_empty_object_and_null_stays_null(api, loop):
    response = api.post("/api/v1/loops/greeting/runs", json={})
    assert response.status_code == 202
    assert response.json()["data"]["input"] == {}
    explicit = api.post("/api/v1/loops/greeting/runs", json={"input": None})
    assert explicit.json()["data"]["input"] is None


def test_a_batch_of_inputs_exists_and_is_queued_when_202_arrives(api, loop):
    inputs = [{"name": f"n{i}"} for i in range(1500)]
    response = api.post("/api/v1/loops/greeting/runs", json={"inputs": inputs})
    assert response.status_code == 202
    data = response.json()["data"]
    assert data["count"] == 1500
    batch = Batch.objects.get(pk=data["batchId"])
    runs = list(Run.objects.filter(batch=batch))
    assert len(runs) == 1500
    assert {r.input["name"] for r in runs} == {f"n{i}" for i in range(1500)}
    assert_queued(runs)
    counts = api.get(f"/api/v1/batches/{batch.pk}").json()["data"]
    assert counts["count"] == 1500
    assert sum(counts["counts"].values()) == 1500


def test_batch_size_limits_are_422(api, loop):
    response = api.post("/api/v1/loops/greeting/runs", json={"inputs": []})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "inputs"
    response = api.post("/api/v1/loops/greeting/runs", json={"inputs": [0] * 100_001})
    assert response.status_code == 422
    assert "inputs" in response.json()["error"]["message"]
    response = api.post("/api/v1/loops/greeting/runs", json={"inputs": [1], "input": 1})
    assert response.status_code == 422
    assert not Run.objects.exists()


def test_idempotency_key_header_answers_the_first_run_and_creates_nothing(api, org, loop):
    headers = {"Idempotency-Key": "order-17"}
    first = api.post("/api/loop/acme/greeting", json={"n": 1}, headers=headers)
    again = api.post("/api/loop/acme/greeting", json={"n": 2}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert Run.objects.count() == 1
    # the v1 endpoint shares the key space of the loop (header or body field)
    by_field = api.post(
        "/api/v1/loops/greeting/runs", json={"input": {"n": 3}, "idempotencyKey": "order-17"}
    )
    assert by_field.status_code == 202
    assert by_field.json()["data"]["id"] == first.json()["runId"]
    assert by_field.json()["data"]["input"] == {"n": 1}
    by_header = api.post("/api/v1/loops/greeting/runs", json={"input": 4}, headers=headers)
    assert by_header.json()["data"]["id"] == first.json()["runId"]
    assert Run.objects.count() == 1
    # another key, or another loop, is a new run
    LoopFactory(organization=org, slug="other")
    assert (
        api.post("/api/loop/acme/other", json={}, headers=headers).json()["runId"]
        != (first.json()["runId"])
    )
    api.post("/api/loop/acme/greeting", json={}, headers={"Idempotency-Key": "order-18"})
    assert Run.objects.count() == 3


def test_concurrent_triggers_with_one_key_make_one_run(api, loop):
    def trigger(n):
        return api.post("/api/loop/acme/greeting", json={"n": n}, headers={"Idempotency-Key": "k"})

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(trigger, range(6)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["runId"] for r in responses}) == 1
    assert Run.objects.count() == 1


def test_an_idempotency_key_older_than_24_hours_triggers_again(api, loop):
    old = RunFactory(loop=loop, idempotency_key="k1")
    Run.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(hours=25))
    response = api.post("/api/loop/acme/greeting", json={}, headers={"Idempotency-Key": "k1"})
    assert response.json()["runId"] != old.pk
    assert Run.objects.count() == 2
    response = api.post("/api/loop/acme/greeting", json={}, headers={"Idempotency-Key": "x" * 201})
    assert response.status_code == 422


def test_live_mode_answers_200_with_the_ended_run_on_both_endpoints(worker, api, loop):
    response = api.post(
        "/api/v1/loops/greeting/runs",
        json={"input": {"name": "Lia"}, "mode": "live", "timeout": 60},
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["status"] == "succeeded"
    assert data["output"] == {"greeting": "Hello, Lia!"}
    response = api.post("/api/loop/acme/greeting?mode=live&timeout=60", json={"name": "Bo"})
    assert response.status_code == 200
    assert response.json()["data"]["output"] == {"greeting": "Hello, Bo!"}


def test_live_mode_answers_202_when_the_run_does_not_end_in_time(worker, api, org):
    LoopFactory(organization=org, slug="waiter", code=WAIT_CODE)
    response = api.post(
        "/api/v1/loops/waiter/runs", json={"input": {}, "mode": "live", "timeout": 1}
    )
    assert response.status_code == 202
    assert response.json()["data"]["id"].startswith("run_")
    response = api.post("/api/loop/acme/waiter?mode=live&timeout=1", json={})
    assert response.status_code == 202
    assert response.json()["runId"].startswith("run_")


def test_an_organization_waits_live_for_at_most_its_share_of_the_web_workers(
    worker, api, loop, other_org, live_server, settings
):
    """A live call over LOOPS_LIVE_WAITS_PER_ORG is answered at once, as if its timeout had
    passed (its run queued); another organization's live call still waits for its run."""
    settings.LOOPS_LIVE_WAITS_PER_ORG = 1
    LoopFactory(organization=other_org, slug="greeting", code=loop.active_version.code)
    other = httpx.Client(base_url=live_server.url, timeout=60,
                         headers={"Authorization": f"Bearer {make_token(other_org)}"})  # fmt: skip
    held_wait = slot(live.LIVE_LOCK, loop.organization_id, 1)  # the organization's one live wait
    with other, held_wait as held:
        assert held
        started = time.monotonic()
        busy = api.post("/api/loop/acme/greeting?mode=live&timeout=30", json={"name": "Al"})
        answered_in = time.monotonic() - started
        theirs = other.post(f"/api/loop/{other_org.slug}/greeting?mode=live&timeout=60", json={})
    assert (busy.status_code, answered_in < 10) == (202, True), (busy.text, answered_in)
    assert Run.objects.filter(pk=busy.json()["runId"]).exists()
    assert theirs.status_code == 200, theirs.text
    assert theirs.json()["data"]["status"] == "succeeded"
    # Its wait over, the organization waits live again.
    again = api.post("/api/loop/acme/greeting?mode=live&timeout=60", json={"name": "Bo"})
    assert again.status_code == 200, again.text


@pytest.mark.parametrize("timeout", ["-1", "121", "nan", "inf", "soon"])
def test_a_live_timeout_out_of_range_is_422(api, loop, timeout):
    response = api.post(f"/api/loop/acme/greeting?mode=live&timeout={timeout}", json={})
    assert response.status_code == 422
    assert "timeout" in response.json()["error"]["message"]
    assert not Run.objects.exists()
