"""Webhook settings pages through Django's test client: edit, disable and enable, delete, send a
test event, the warning for a URL deliveries would refuse, one row per event, and who may."""

import json

import pytest
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts.models import Role
from runs import outbound, webhooks
from runs.models import DeliveryStatus, Webhook, WebhookDelivery
from runs.services import run_cancel
from runs.webhooks import webhook_create
from tests.conftest import send_due_deliveries
from tests.factories import LoopFactory, MembershipFactory, RunFactory, UserFactory
from tests.test_webhooks import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture
def hook_admin(client, org):
    """An admin (not the owner): the role the pages ask for."""
    admin = MembershipFactory(
        organization=org, role=Role.ADMIN, user=UserFactory(username="ada")
    ).user
    client.force_login(admin)
    return client


@pytest.fixture
def member_client(client, member):
    client.force_login(member)  # an editor: deploys and runs, does not manage webhooks
    return client


@pytest.fixture
def hook(org):
    return webhook_create(
        organization=org, url="https://93.184.215.14/hooks/loops", events=["run.failed"]
    )


@pytest.fixture
def receiver(settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True  # the receiver listens on loopback
    made = []

    def make(*statuses):
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def page_of(client, hook) -> str:
    return client.get(reverse("accounts:webhook", args=[hook.pk])).content.decode()


def test_an_admin_edits_url_events_and_loop_on_the_webhook_page(hook_admin, hook, loop):
    page = page_of(hook_admin, hook)
    assert 'value="https://93.184.215.14/hooks/loops"' in page  # the form holds the settings
    response = hook_admin.post(
        reverse("accounts:webhook", args=[hook.pk]),
        {"url": "https://93.184.215.14/v2", "events": ["run.succeeded", "run.cancelled"],
         "loop": loop.slug},
        follow=True,
    )  # fmt: skip
    assert "Webhook saved." in response.content.decode()
    secret = hook.secret
    hook.refresh_from_db()
    assert (hook.url, hook.events, hook.loop) == (
        "https://93.184.215.14/v2", ["run.succeeded", "run.cancelled"], loop
    )  # fmt: skip
    assert hook.secret == secret  # receivers keep verifying with the same secret


def test_an_invalid_edit_shows_the_error_at_its_field_and_saves_nothing(hook_admin, hook):
    response = hook_admin.post(
        reverse("accounts:webhook", args=[hook.pk]), {"url": "ftp://example.com/x"}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["url"]
    assert 'class="field-error"' in response.content.decode()
    hook.refresh_from_db()
    assert (hook.url, hook.events) == ("https://93.184.215.14/hooks/loops", ["run.failed"])


def cancel_a_waiting_run(loop, capture) -> None:
    run = RunFactory(loop=loop, status="waiting", pending={"kind": "sleep"})
    with capture(execute=True), transaction.atomic():
        run_cancel(run=run)


def test_a_disabled_webhook_gets_no_deliveries_until_enabled(
    hook_admin, org, loop, django_capture_on_commit_callbacks
):
    hook = webhook_create(organization=org, url="https://93.184.215.14/h", events=["cancelled"])
    webhook_create(organization=org, url="https://93.184.215.14/other", events=["failed"])
    response = hook_admin.post(reverse("accounts:webhook_disable", args=[hook.pk]), follow=True)
    page = response.content.decode()
    assert "Webhook disabled" in page
    assert '<span class="badge badge-cancelled" id="hook-state">Disabled</span>' in page
    assert reverse("accounts:webhook_enable", args=[hook.pk]) in page
    assert reverse("accounts:webhook_test", args=[hook.pk]) not in page
    hook.refresh_from_db()
    assert hook.active is False
    cancel_a_waiting_run(loop, django_capture_on_commit_callbacks)
    assert not WebhookDelivery.objects.exists()

    response = hook_admin.post(reverse("accounts:webhook_enable", args=[hook.pk]), follow=True)
    assert "Webhook enabled" in response.content.decode()
    hook.refresh_from_db()
    assert hook.active is True
    cancel_a_waiting_run(loop, django_capture_on_commit_callbacks)
    assert list(WebhookDelivery.objects.values_list("event", flat=True)) == ["run.cancelled"]


def test_a_retry_queued_before_the_webhook_was_disabled_is_not_sent(hook_admin, hook, monkeypatch):
    delivery = WebhookDelivery.objects.create(
        webhook=hook, event="run.failed", payload={}, attempt=1, next_attempt_at=hook.created_at
    )
    hook_admin.post(reverse("accounts:webhook_disable", args=[hook.pk]))

    def no_request(*args, **kwargs):
        raise AssertionError("a disabled webhook was posted to")

    monkeypatch.setattr(outbound, "request", no_request)
    assert webhooks.deliver(delivery.pk) == "webhook disabled"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt) == (DeliveryStatus.FAILED, 1)
    assert delivery.error == "Not sent: the webhook is disabled."
    response = hook_admin.post(
        reverse("accounts:redeliver", args=[hook.pk, delivery.pk]), follow=True
    )
    assert "enable it to redeliver" in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED


def test_delete_asks_first_then_removes_the_webhook_and_its_deliveries(hook_admin, hook):
    page = page_of(hook_admin, hook)
    delete_url = reverse("accounts:webhook_delete", args=[hook.pk])
    form = page.split(f'action="{delete_url}"')[1].split(">")[0]
    assert 'data-confirm="Delete this webhook?' in form
    WebhookDelivery.objects.create(webhook=hook, event="run.failed", payload={})

    response = hook_admin.post(delete_url, follow=True)
    assert response.redirect_chain[-1][0] == reverse("accounts:webhooks")
    assert "was deleted" in response.content.decode()
    assert not Webhook.objects.exists()
    assert not WebhookDelivery.objects.exists()  # nothing left for a sender to send


def test_send_test_event_posts_a_signed_ping_listed_with_the_deliveries(hook_admin, org, receiver):
    target = receiver(200)
    hook = webhook_create(organization=org, url=target.url, events=["run.failed"])
    response = hook_admin.post(reverse("accounts:webhook_test", args=[hook.pk]))
    assert response.status_code == 302
    assert send_due_deliveries() == 1  # a sender of the cluster takes it
    (headers, body), = target.requests  # fmt: skip
    assert headers["X-Loops-Event"] == "ping"  # sent whatever events the hook subscribes to
    assert headers["X-Loops-Signature"] == webhooks.sign(hook.secret, body)
    assert json.loads(body)["data"]["webhookId"] == hook.pk
    delivery = WebhookDelivery.objects.get()
    assert (delivery.event, delivery.status, delivery.status_code, delivery.run_id) == (
        "ping", DeliveryStatus.SUCCEEDED, 200, None
    )  # fmt: skip
    page = hook_admin.get(response.url).content.decode()
    assert "Test event (ping) sent" in page
    row = page.split(f'id="delivery-{delivery.pk}"')[1].split("</tr>")[0]
    assert "ping" in row
    assert "Succeeded" in row
    assert "HTTP 200" in row


def test_a_disabled_webhook_sends_no_test_event(hook_admin, hook):
    hook_admin.post(reverse("accounts:webhook_disable", args=[hook.pk]))
    response = hook_admin.post(reverse("accounts:webhook_test", args=[hook.pk]), follow=True)
    assert "enable it to send a test event" in response.content.decode()
    assert not WebhookDelivery.objects.exists()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:9/hook", "requests to 127.0.0.1 (127.0.0.1) are refused"),
        ("http://10.1.2.3/hook", "requests to 10.1.2.3 (10.1.2.3) are refused"),
        ("https://nowhere.invalid/hook", "cannot resolve host &#x27;nowhere.invalid&#x27;"),
    ],
)
def test_saving_a_url_deliveries_would_refuse_warns_naming_the_url_field(
    hook_admin, org, hook, settings, url, reason
):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = False
    created = hook_admin.post(reverse("accounts:webhooks"), {"url": url}, follow=True)
    page = created.content.decode()
    assert "Webhook created." in page
    assert 'class="flash flash-warning"' in page
    assert f"URL: saved, but deliveries to it will fail: {reason}" in page
    assert Webhook.objects.filter(url=url).exists()  # kept: DNS may say otherwise at delivery

    edited = hook_admin.post(
        reverse("accounts:webhook", args=[hook.pk]), {"url": url}, follow=True
    ).content.decode()
    assert "Webhook saved." in edited
    assert f"URL: saved, but deliveries to it will fail: {reason}" in edited


def test_a_public_url_is_saved_without_a_warning(hook_admin, hook, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = False
    edited = hook_admin.post(
        reverse("accounts:webhook", args=[hook.pk]), {"url": "https://93.184.215.14/v3"},
        follow=True,
    ).content.decode()  # fmt: skip
    assert "Webhook saved." in edited
    assert "deliveries to it will fail" not in edited


def test_one_event_is_one_row_showing_its_latest_state_and_attempts(hook_admin, org, receiver):
    target = receiver(500, 200)
    hook = webhook_create(organization=org, url=target.url)
    hook_admin.post(reverse("accounts:webhook_test", args=[hook.pk]))
    assert send_due_deliveries() == 1
    delivery = WebhookDelivery.objects.get()
    page = page_of(hook_admin, hook)
    assert page.count('id="delivery-') == 1
    row = page.split(f'id="delivery-{delivery.pk}"')[1].split("</tr>")[0]
    assert "Retrying" in row
    assert "HTTP 500" in row
    assert "1 of 5" in row
    assert "next in" in row

    assert send_due_deliveries() == 0  # not before its backoff
    WebhookDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert send_due_deliveries() == 1  # the backoff passed: a sender takes the retry
    page = page_of(hook_admin, hook)
    assert page.count('id="delivery-') == 1
    row = page.split(f'id="delivery-{delivery.pk}"')[1].split("</tr>")[0]
    assert "Succeeded" in row
    assert "HTTP 200" in row
    assert "2 of 5" in row
    assert len(target.requests) == 2


def actions_on(hook: Webhook) -> list[tuple[str, str, dict]]:
    delivery = WebhookDelivery.objects.create(
        webhook=hook, event="run.failed", payload={}, status="failed", attempt=5
    )
    return [
        ("get", reverse("accounts:webhook", args=[hook.pk]), {}),
        ("post", reverse("accounts:webhook", args=[hook.pk]), {"url": "https://93.184.215.14/x"}),
        ("post", reverse("accounts:webhook_disable", args=[hook.pk]), {}),
        ("post", reverse("accounts:webhook_enable", args=[hook.pk]), {}),
        ("post", reverse("accounts:webhook_test", args=[hook.pk]), {}),
        ("post", reverse("accounts:redeliver", args=[hook.pk, delivery.pk]), {}),
        ("post", reverse("accounts:webhook_delete", args=[hook.pk]), {}),
    ]


def assert_untouched(hook: Webhook) -> None:
    fresh = Webhook.objects.get(pk=hook.pk)
    assert (fresh.url, fresh.active) == (hook.url, hook.active)
    assert list(fresh.deliveries.values_list("event", "status")) == [("run.failed", "failed")]


def test_another_organizations_webhook_is_404_for_every_action(hook_admin, other_org):
    foreign = webhook_create(organization=other_org, url="https://93.184.215.14/theirs")
    for method, url, data in actions_on(foreign):
        response = getattr(hook_admin, method)(url, data)
        assert response.status_code == 404, url
    assert_untouched(foreign)


def test_a_member_who_is_not_an_admin_gets_403_for_every_action(member_client, org):
    hook = webhook_create(organization=org, url="https://93.184.215.14/ours")
    for method, url, data in actions_on(hook):
        response = getattr(member_client, method)(url, data)
        assert response.status_code == 403, url
    assert_untouched(hook)
    assert member_client.get(reverse("accounts:webhooks")).status_code == 403


def test_the_loop_choices_are_the_organizations_own(hook_admin, hook, other_org):
    LoopFactory(organization=other_org, slug="theirs")
    response = hook_admin.post(
        reverse("accounts:webhook", args=[hook.pk]),
        {"url": "https://93.184.215.14/x", "loop": "theirs"},
    )
    assert response.context["form"].errors["loop"]
    hook.refresh_from_db()
    assert hook.loop is None


def test_the_django_admin_warns_about_a_refused_url_and_enables_or_disables_in_bulk(
    client, admin_user, org, hook, settings
):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = False
    client.force_login(admin_user)  # staff: the Django admin, across organizations
    change = reverse("admin:runs_webhook_change", args=[hook.pk])
    response = client.post(
        change,
        {"organization": org.pk, "url": "http://127.0.0.1:9/hook", "events": '["run.failed"]',
         "active": "on"},
        follow=True,
    )  # fmt: skip
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("URL: saved, but deliveries to it will fail: ") for m in shown)
    hook.refresh_from_db()
    assert hook.url == "http://127.0.0.1:9/hook"

    changelist = reverse("admin:runs_webhook_changelist")
    client.post(changelist, {"action": "disable", "_selected_action": [hook.pk]})
    hook.refresh_from_db()
    assert hook.active is False
    client.post(changelist, {"action": "enable", "_selected_action": [hook.pk]})
    hook.refresh_from_db()
    assert hook.active is True
