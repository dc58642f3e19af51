"""Run pages through Django's test client: controls, nesting, HTTP errors, paging, webhooks."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from runs.models import Run, Step, Webhook, WebhookDelivery
from tests.factories import RunFactory

pytestmark = pytest.mark.django_db


def test_cancel_then_resume_show_their_outcome(owner_client, loop):
    run = RunFactory(loop=loop, status="waiting", pending={"kind": "sleep"})
    response = owner_client.post(reverse("runs:cancel", args=[run.pk]), follow=True)
    assert "Run cancelled." in response.content.decode()
    run.refresh_from_db()
    assert run.status == "cancelled"
    again = owner_client.post(reverse("runs:cancel", args=[run.pk]), follow=True)
    assert "already ended" in again.content.decode()  # the DomainError's message
    resumed = owner_client.post(reverse("runs:resume", args=[run.pk]), follow=True)
    assert "Resumed from the last checkpoint." in resumed.content.decode()
    run.refresh_from_db()
    assert run.status == "pending"
    assert run.attempt == 2


def test_respond_to_a_run_not_waiting_shows_the_reason(owner_client, loop):
    run = RunFactory(loop=loop, status="succeeded")
    response = owner_client.post(
        reverse("runs:respond", args=[run.pk]), {"action": "approve"}, follow=True
    )
    assert "not waiting for a person" in response.content.decode()


def test_http_error_shows_status_headers_and_body(owner_client, loop):
    run = RunFactory(loop=loop, status="failed", error_message="HTTP 503")
    Step.objects.create(
        run=run, order=1, key="Call#1", name="Call", kind="http", status="failed",
        error={"message": "Service Unavailable", "status": 503,
               "headers": {"retry-after": "30"}, "body": {"error": "maintenance"}},
    )  # fmt: skip
    page = owner_client.get(run.get_absolute_url()).content.decode()
    assert "HTTP 503" in page
    assert "retry-after" in page
    assert '<th>error</th><td><span class="fv-str">maintenance</span></td>' in page  # Formatted
    assert "{&quot;error&quot;:&quot;maintenance&quot;}" in page  # Raw


def test_child_run_is_nested_and_has_a_breadcrumb(owner_client, loop):
    parent = RunFactory(loop=loop, status="succeeded")
    step = Step.objects.create(run=parent, order=1, key="Child#1", name="Call child",
                               kind="child", status="succeeded")  # fmt: skip
    child = RunFactory(loop=loop, parent_step=step, trigger_type="system")
    Step.objects.create(run=child, order=1, key="Inner#1", name="Inner work", status="succeeded")
    page = owner_client.get(parent.get_absolute_url()).content.decode()
    assert "Child run" in page
    assert "Inner work" in page
    child_page = owner_client.get(child.get_absolute_url()).content.decode()
    assert f'href="{parent.get_absolute_url()}#step-{step.pk}">Call child</a>' in child_page


def test_errors_filter_keeps_failed_steps_only(owner_client, loop):
    run = RunFactory(loop=loop, status="failed")
    Step.objects.create(run=run, order=1, key="a#1", name="Fine step", status="succeeded")
    Step.objects.create(run=run, order=2, key="b#1", name="Broken step", status="failed",
                        error={"message": "boom", "type": "ValueError"})  # fmt: skip
    page = owner_client.get(run.get_absolute_url(), {"steps": "errors"}).content.decode()
    assert "Broken step" in page
    assert "Fine step" not in page


def test_runs_list_is_paginated_newest_first(owner_client, loop):
    now = timezone.now()
    runs = [RunFactory(loop=loop, created_at=now - timedelta(minutes=i)) for i in range(30)]
    first = owner_client.get(reverse("loops:runs", args=[loop.slug])).content.decode()
    assert first.count('class="run-row"') == 25
    assert first.index(runs[0].pk) < first.index(runs[1].pk)
    assert "Page 1 of 2" in first
    second = owner_client.get(reverse("loops:runs", args=[loop.slug]), {"page": 2})
    assert second.content.decode().count('class="run-row"') == 5


def test_live_poll_answers_204_when_nothing_changed(owner_client, loop):
    run = RunFactory(loop=loop, status="running")
    page = owner_client.get(run.get_absolute_url()).content.decode()
    token = page.split("?since=")[1].split('"')[0]
    url = run.get_absolute_url()
    headers = {"HX-Request": "true", "HX-Target": "run-live"}
    assert owner_client.get(url, {"since": token}, headers=headers).status_code == 204
    Run.objects.filter(pk=run.pk).update(status="succeeded")
    changed = owner_client.get(url, {"since": token}, headers=headers)
    assert changed.status_code == 286  # htmx swaps it in and stops polling: it has ended
    assert "hx-trigger" not in changed.content.decode().split('id="run-live"')[1].split(">")[0]


def _list_poll(client, url, query=None):
    """The runs list as its live poll asks for it: the URL its results section polls."""
    page = client.get(url, query or {}).content.decode()
    poll = page.split('id="results"')[1].split('hx-get="')[1].split('"')[0]
    return poll.replace("&amp;", "&")


def test_runs_list_poll_brings_new_runs_that_match_its_filters(owner_client, loop, org):
    RunFactory(loop=loop, status="failed")
    url = reverse("runs:list")
    poll = _list_poll(owner_client, url, {"status": "failed"})
    headers = {"HX-Request": "true", "HX-Target": "results"}
    assert owner_client.get(poll, headers=headers).status_code == 204  # nothing new
    RunFactory(loop=loop, status="succeeded")  # not shown under this filter
    assert owner_client.get(poll, headers=headers).status_code == 204
    new = RunFactory(loop=loop, status="failed")
    fresh = owner_client.get(poll, headers=headers)
    assert fresh.status_code == 200
    body = fresh.content.decode()
    assert body.count('class="run-row"') == 2
    assert body.index(new.pk) < body.index("run-row", body.index("run-row") + 1)  # on top
    assert 'hx-get="/runs/?status=failed&since=' in body  # it goes on polling the filter


def test_redeliver_a_webhook_delivery(owner_client, org, loop):
    hook = Webhook.objects.create(organization=org, url="https://example.com/h", secret="s")
    delivery = WebhookDelivery.objects.create(webhook=hook, event="run.failed", payload={},
                                              status="failed", attempt=3)  # fmt: skip
    page = owner_client.get(reverse("accounts:webhook", args=[hook.pk])).content.decode()
    assert "run.failed" in page
    response = owner_client.post(
        reverse("accounts:redeliver", args=[hook.pk, delivery.pk]), follow=True
    )
    assert "Delivery queued again." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "pending"
