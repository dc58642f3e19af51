"""Webhooks: the API to manage them, and signed deliveries retried after a failing receiver."""

import hashlib
import hmac
import json
import os
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.db import transaction
from django.utils import timezone

from runs import clock, reactions, services, state, webhooks
from runs.engine.executor import execute_run
from runs.models import DeliveryStatus, Run, Step, Webhook, WebhookDelivery
from tests.conftest import Cluster, send_work_to, wait_until
from tests.engine_helpers import deploy, fire_timer_of, program
from tests.factories import LoopFactory, RunFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records requests and answers given statuses."""

    def __init__(self, statuses, delay: float = 0.0):
        self.statuses = list(statuses)
        self.requests = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                reply = b"boom" if status >= 500 else b"thanks"
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(*statuses):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_create_shows_the_secret_once_list_and_delete(api, loop):
    response = api.post(
        "/api/v1/webhooks",
        json={"url": "https://example.com/hook", "events": ["succeeded", "run.failed"]},
    )
    assert response.status_code == 201, response.text
    created = response.json()["data"]
    assert created["id"].startswith("hook_")
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["run.succeeded", "run.failed"]
    assert created["loopId"] is None
    per_loop = api.post(
        "/api/v1/webhooks", json={"url": "https://example.com/other", "loop": "greeting"}
    ).json()["data"]
    assert per_loop["loopId"] == loop.pk
    listed = api.get("/api/v1/webhooks").json()["data"]
    assert {h["id"] for h in listed} == {created["id"], per_loop["id"]}
    assert all(h.get("secret") is None for h in listed)
    assert api.delete(f"/api/v1/webhooks/{created['id']}").status_code == 204
    assert [h["id"] for h in api.get("/api/v1/webhooks").json()["data"]] == [per_loop["id"]]
    assert api.delete(f"/api/v1/webhooks/{created['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://example.com/x", "events": ["run.exploded"]}, "events"),
    ],
)
def test_invalid_webhooks_are_422_naming_the_field(api, body, field):
    response = api.post("/api/v1/webhooks", json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["error"]["details"]] == [field]
    assert not Webhook.objects.exists()


def test_another_orgs_webhooks_are_invisible(api, other_org):
    foreign = Webhook.objects.create(organization=other_org, url="https://x.test/h", secret="s")
    assert api.get("/api/v1/webhooks").json()["data"] == []
    assert api.delete(f"/api/v1/webhooks/{foreign.pk}").status_code == 404
    foreign_loop = LoopFactory(organization=other_org)
    response = api.post(
        "/api/v1/webhooks", json={"url": "https://x.test/h", "loop": foreign_loop.pk}
    )
    assert response.status_code == 404
    assert Webhook.objects.count() == 1


def due() -> list[str]:
    """The deliveries a sender of this queue would take now (runs.senders), oldest first."""
    return [pk for pk, _ in webhooks.due_deliveries(limit=1000, per_organization=1000)]


def backoff_passes(delivery) -> None:
    """The delivery's retry is due now (its backoff has passed)."""
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())


def succeeded_run(loop) -> Run:
    run = RunFactory(loop=loop, status="pending", input={"name": "Wen"})
    execute_run(run.pk)  # the worker's code path, in-process
    run.refresh_from_db()
    assert run.status == "succeeded"
    return run


def test_a_status_change_posts_the_signed_run_and_retries_a_failing_receiver(
    api, loop, receiver, settings
):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    settings.LOOPS_WEBHOOK_RETRY_BASE_SECONDS = 7
    target = receiver(500)
    secret = api.post(
        "/api/v1/webhooks", json={"url": target.url, "events": ["succeeded"], "loop": "greeting"}
    ).json()["data"]["secret"]
    run = succeeded_run(loop)

    delivery = WebhookDelivery.objects.get()  # only the subscribed event was queued
    assert delivery.event == "run.succeeded"
    assert due() == [delivery.pk]  # due at once
    assert webhooks.deliver(delivery.pk) == "attempt 1 failed"
    delivery.refresh_from_db()
    # the event stays one row: pending again, its first attempt recorded on it
    assert (delivery.status, delivery.status_code, delivery.attempt) == ("pending", 500, 1)
    assert (delivery.response_excerpt, delivery.error) == ("boom", "HTTP 500")
    assert delivery.delivered_at is not None

    # the retry is due after the backoff; no sender takes it before then
    retry_at = delivery.next_attempt_at
    assert abs(retry_at - (timezone.now() + timedelta(seconds=7))) < timedelta(seconds=5)
    assert due() == []
    assert webhooks.deliver(delivery.pk) == "nothing to do"  # early, or a second sender
    assert [pk for pk, _ in webhooks.due_deliveries(limit=9, per_organization=9, now=retry_at)] == [
        delivery.pk
    ]
    backoff_passes(delivery)
    assert webhooks.deliver(delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.status_code, delivery.attempt) == ("succeeded", 200, 2)
    assert (delivery.response_excerpt, delivery.error) == ("thanks", "")
    assert delivery.next_attempt_at is None
    assert webhooks.deliver(delivery.pk) == "nothing to do"  # never posted twice
    assert WebhookDelivery.objects.count() == 1

    assert len(target.requests) == 2
    for headers, body in target.requests:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Loops-Signature"] == f"sha256={expected}"
        assert headers["X-Loops-Event"] == "run.succeeded"
        assert headers["Content-Type"] == "application/json"
        payload = json.loads(body)
        assert payload["event"] == "run.succeeded"
        assert payload["data"]["id"] == run.pk
        assert payload["data"]["status"] == "succeeded"
        assert payload["data"]["output"] == {"greeting": "Hello, Wen!"}
    tampered = hmac.new(b"wrong secret", target.requests[0][1], hashlib.sha256).hexdigest()
    assert target.requests[0][0]["X-Loops-Signature"] != f"sha256={tampered}"


def test_deliveries_give_up_after_the_last_attempt(api, loop, receiver, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    settings.LOOPS_WEBHOOK_MAX_ATTEMPTS = 3
    target = receiver(500, 502, 503)
    api.post("/api/v1/webhooks", json={"url": target.url, "events": ["succeeded"]})
    succeeded_run(loop)
    delivery = WebhookDelivery.objects.get()
    for attempt, status in ((1, 500), (2, 502), (3, 503)):
        if attempt > 1:
            backoff_passes(delivery)
        assert webhooks.deliver(delivery.pk) == f"attempt {attempt} failed"
        delivery.refresh_from_db()
        assert (delivery.attempt, delivery.status_code) == (attempt, status)
    assert delivery.status == DeliveryStatus.FAILED  # the last attempt: no retry is scheduled
    assert delivery.next_attempt_at is None
    assert due() == []
    assert WebhookDelivery.objects.count() == 1  # one event, one row
    assert len(target.requests) == 3


def test_a_private_address_is_refused_unless_allowed(api, loop, receiver, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = False
    target = receiver()
    api.post("/api/v1/webhooks", json={"url": target.url})
    succeeded_run(loop)
    delivery = WebhookDelivery.objects.get(event="run.succeeded")
    webhooks.deliver(delivery.pk)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt) == ("pending", 1)  # retried, as any failure
    assert delivery.status_code is None
    assert "TargetRefused" in delivery.error
    assert target.requests == []


def test_hooks_of_another_loop_or_event_are_not_called(api, org, loop, receiver, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    target = receiver()
    other = LoopFactory(organization=org, slug="other")
    api.post("/api/v1/webhooks", json={"url": target.url, "loop": other.pk})
    api.post("/api/v1/webhooks", json={"url": target.url, "events": ["failed"]})
    succeeded_run(loop)
    assert not WebhookDelivery.objects.exists()


def events_of(run_id: str) -> list[str]:
    return list(
        WebhookDelivery.objects.filter(run_id=run_id).order_by("pk").values_list("event", flat=True)
    )


def test_every_status_change_is_announced_once(api, org):
    napper = deploy(org, program('step.sleep("Nap", 60)\nreturn "rested"'), slug="napper")
    api.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/loops"})
    run_id = api.post(f"/api/loop/{org.slug}/{napper.slug}", json={}).json()["runId"]
    assert events_of(run_id) == ["run.pending"]

    execute_run(run_id)  # runs, then waits for its sleep
    assert events_of(run_id) == ["run.pending", "run.running", "run.waiting"]

    assert fire_timer_of(Step.objects.get(run_id=run_id)) == 1  # woken: back in the queue
    execute_run(run_id)
    assert events_of(run_id) == [
        "run.pending", "run.running", "run.waiting", "run.pending", "run.running",
        "run.succeeded",
    ]  # fmt: skip
    payloads = WebhookDelivery.objects.filter(run_id=run_id).order_by("pk")
    assert [d.payload["data"]["status"] for d in payloads] == [
        e.removeprefix("run.") for e in events_of(run_id)
    ]
    assert len(due()) == 6  # each due at once, for the senders


def test_a_run_whose_worker_died_is_announced_pending_again(api, org, loop):
    api.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/loops"})
    run_id = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={}).json()["runId"]
    claim = state.claim_next()  # a worker starts the run, then dies with it
    assert claim.run.pk == run_id
    reactions.after(claim.change)
    assert events_of(run_id) == ["run.pending", "run.running"]

    with transaction.atomic():  # the lease runs out and the clock takes the run back at once
        Run.objects.filter(pk=run_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
        clock.round_()
    assert Run.objects.get(pk=run_id).status == "pending"
    assert events_of(run_id) == ["run.pending", "run.running", "run.pending"]

    execute_run(run_id)
    assert events_of(run_id) == [
        "run.pending", "run.running", "run.pending", "run.running", "run.succeeded",
    ]  # fmt: skip


def test_a_real_worker_announces_each_status_change_once(worker, api, org):
    napper = deploy(org, program('step.sleep("Nap", 1)\nreturn "rested"'), slug="napper")
    api.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/loops"})
    run_id = api.post(f"/api/loop/{org.slug}/{napper.slug}", json={}).json()["runId"]
    expected = [
        "run.pending", "run.running", "run.waiting", "run.pending", "run.running",
        "run.succeeded",
    ]  # fmt: skip
    wait_until(lambda: events_of(run_id) == expected, timeout=60)
    assert Run.objects.get(pk=run_id).output == "rested"


def test_a_webhook_retry_is_sent_within_a_second_of_its_time(api, org, loop, monkeypatch, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True  # here, to subscribe a URL no worker may reach
    queue = f"test-hook-retry-{os.getpid()}"
    send_work_to(monkeypatch, queue)
    cluster = Cluster({"LOOPS_QUEUE": queue, "LOOPS_WEBHOOK_RETRY_BASE_SECONDS": "2"})
    try:
        api.post(
            "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["succeeded"]}
        )
        run_id = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={}).json()["runId"]
        deliveries = WebhookDelivery.objects.filter(run_id=run_id)
        # The first attempt is refused (a private address): the next is due 2 s later.
        first = wait_until(lambda: deliveries.filter(attempt=1).first(), timeout=60)
        second = wait_until(lambda: deliveries.filter(attempt=2).first(), timeout=60)
    finally:
        cluster.stop()
    # Whichever cluster's sender took it (they share the database), it went out on time.
    lateness = (second.delivered_at - first.next_attempt_at).total_seconds()
    assert 0 <= lateness < 1, lateness


def test_a_change_rolled_back_announces_nothing(api, org, loop):
    api.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/loops"})
    run_id = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={}).json()["runId"]
    assert len(due()) == 1  # run.pending, made once its transaction committed

    def cancel_then_fail():
        with transaction.atomic():
            services.run_cancel(run=Run.objects.get(pk=run_id))
            raise RuntimeError("the cancel is rolled back")

    with pytest.raises(RuntimeError):
        cancel_then_fail()
    assert Run.objects.get(pk=run_id).status == "pending"
    assert events_of(run_id) == ["run.pending"]
    assert len(due()) == 1  # nothing made of a change that never was


def test_failures_and_cancellations_are_announced(api, org, loop):
    breaks = deploy(org, program("raise ValueError('no')"), slug="breaks")
    api.post("/api/v1/webhooks", json={"url": "https://hooks.example.com/loops"})
    failed = api.post(f"/api/loop/{org.slug}/{breaks.slug}", json={}).json()["runId"]
    execute_run(failed)
    assert events_of(failed) == ["run.pending", "run.running", "run.failed"]

    cancelled = api.post(f"/api/loop/{org.slug}/{loop.slug}", json={}).json()["runId"]
    assert api.post(f"/api/v1/runs/{cancelled}/cancel").status_code == 202
    assert events_of(cancelled) == ["run.pending", "run.cancelled"]


# --- Senders: deliveries beside the turns of runs, fair between organizations ---------------------


def test_an_organizations_backlog_does_not_hold_back_anothers_deliveries(org, other_org):
    """Each organization's oldest deliveries first, taking turns: a later delivery of one
    organization is due among the first, whatever the backlog of another."""
    theirs = Webhook.objects.create(organization=other_org, url="https://x.test/h", secret="s")
    ours = Webhook.objects.create(organization=org, url="https://y.test/h", secret="s")
    long_ago = timezone.now() - timedelta(hours=1)
    backlog = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(webhook=theirs, event="ping", payload={}, next_attempt_at=long_ago)
        for _ in range(50)
    )
    mine = WebhookDelivery.objects.create(webhook=ours, event="ping", payload={})
    taken = webhooks.due_deliveries(limit=2, per_organization=1)
    assert taken == [(backlog[0].pk, other_org.pk), (mine.pk, org.pk)]
    assert len(webhooks.due_deliveries(limit=100, per_organization=100)) == 51


def test_an_organizations_share_of_the_pick_spans_all_its_webhooks(org, other_org):
    """Each webhook's oldest deliveries are read; the organization's oldest of them all are
    its share, however many webhooks it has. Deliveries of another queue, not yet due, or
    ended are not picked."""
    hooks = [
        Webhook.objects.create(organization=other_org, url=f"https://x.test/{n}", secret="s")
        for n in range(3)
    ]
    ours = Webhook.objects.create(organization=org, url="https://y.test/h", secret="s")
    start = timezone.now() - timedelta(hours=1)

    def delivery(hook, minutes: int, **fields) -> WebhookDelivery:
        return WebhookDelivery.objects.create(
            webhook=hook, event="ping", payload={},
            next_attempt_at=start + timedelta(minutes=minutes), **fields,
        )  # fmt: skip

    theirs = {minutes: delivery(hooks[minutes % 3], minutes) for minutes in range(9)}
    mine = delivery(ours, 30)
    delivery(ours, 0, queue="elsewhere")
    delivery(ours, 1, status="succeeded")
    delivery(ours, 120)  # due in an hour
    taken = webhooks.due_deliveries(limit=10, per_organization=4)
    assert taken == [
        (theirs[0].pk, other_org.pk),
        (mine.pk, org.pk),
        *[(theirs[minutes].pk, other_org.pk) for minutes in (1, 2, 3)],
    ]


def test_an_organization_has_at_most_its_webhooks(api, settings):
    settings.LOOPS_MAX_WEBHOOKS_PER_ORG = 2
    for n in range(2):
        assert api.post("/api/v1/webhooks", json={"url": f"https://x.test/{n}"}).status_code == 201
    response = api.post("/api/v1/webhooks", json={"url": "https://x.test/3"})
    assert response.status_code == 409
    assert "has 2 webhooks, the most it may have" in response.json()["error"]["message"]
    assert Webhook.objects.count() == 2


def test_one_organizations_webhooks_delay_no_other_organizations_runs_or_deliveries(
    org, other_org, loop, live_server, monkeypatch, settings
):
    """Another organization has 20 webhooks to a receiver that takes 0.5 s, and a batch whose
    status changes make 1,200 deliveries. This organization's run, triggered after them, still
    ends at once, and its own delivery goes out in seconds, long before theirs are done (a
    review finding: they were tasks in the queue of the turns, and ran first)."""
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    queue = f"test-senders-{os.getpid()}"
    send_work_to(monkeypatch, queue)
    slow = Receiver([], delay=0.5)  # every answer a 200, after 0.5 s
    LoopFactory(organization=other_org, slug="greeting", code=loop.active_version.code)
    for n in range(20):
        webhooks.webhook_create(organization=other_org, url=f"{slow.url}/{n}")
    ours = webhooks.webhook_create(organization=org, url=f"{slow.url}/ours", events=["succeeded"])
    theirs = httpx.Client(base_url=live_server.url, timeout=60,
                          headers={"Authorization": f"Bearer {make_token(other_org)}"})  # fmt: skip
    mine = httpx.Client(base_url=live_server.url, timeout=60,
                        headers={"Authorization": f"Bearer {make_token(org)}"})  # fmt: skip
    cluster = Cluster({"LOOPS_QUEUE": queue, "LOOPS_HTTP_ALLOW_PRIVATE": "1"})
    try:
        with theirs, mine:
            batch = theirs.post("/api/v1/loops/greeting/runs", json={"inputs": [{}] * 20})
            assert batch.status_code == 202, batch.text
            their_runs = Run.objects.filter(organization=other_org)
            wait_until(lambda: their_runs.filter(status="succeeded").count() == 20, timeout=60)
            wait_until(lambda: WebhookDelivery.objects.count() >= 1200, timeout=60)

            started = time.monotonic()
            run_id = mine.post(f"/api/loop/{org.slug}/{loop.slug}", json={}).json()["runId"]
            wait_until(lambda: Run.objects.get(pk=run_id).status == "succeeded", timeout=60)
            ended_in = time.monotonic() - started
            delivered = WebhookDelivery.objects.filter(webhook=ours, status="succeeded")
            wait_until(delivered.exists, timeout=60)
            delivered_in = time.monotonic() - started
            waiting = WebhookDelivery.objects.filter(webhook__organization=other_org,
                                                     status="pending").count()  # fmt: skip
    finally:
        cluster.stop()
        slow.close()
    assert ended_in < 5, ended_in
    assert delivered_in < 10, delivered_in
    assert waiting > 1000  # theirs go on at their own pace
