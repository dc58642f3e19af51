"""A webhook managed from its page in Chromium: edited (with the warning for a URL deliveries
would refuse), sent a test event, disabled and enabled, and deleted after confirming."""

import json

import pytest
from playwright.sync_api import expect

from runs.models import Webhook
from runs.webhooks import webhook_create
from tests.test_webhooks import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def target():
    receiver = Receiver([200])
    yield receiver
    receiver.close()


def test_edit_test_disable_enable_and_delete_a_webhook(
    live_server, login, org, owner, loop, target, senders_in_process, settings, screenshot
):
    hook = webhook_create(organization=org, url="https://93.184.215.14/old", events=["failed"])
    page = login(owner)
    page.goto(live_server.url + "/settings/webhooks/")
    page.get_by_role("link", name="https://93.184.215.14/old").click()

    # Edit: the receiver listens on loopback, which deliveries refuse here; saved, with a warning.
    settings.LOOPS_HTTP_ALLOW_PRIVATE = False
    form = page.locator("#hook-settings")
    form.get_by_label("URL").fill(target.url)
    form.get_by_label("run.succeeded").check()
    form.get_by_label("Only for loop").select_option(loop.slug)
    form.get_by_role("button", name="Save changes").click()
    expect(page.get_by_text("Webhook saved.")).to_be_visible()
    warning = page.locator(".flash-warning")
    expect(warning).to_contain_text("URL: saved, but deliveries to it will fail")
    expect(warning).to_contain_text("127.0.0.1")
    expect(page.locator("#hook-url")).to_have_text(target.url)
    screenshot("webhook-url-warning")
    hook.refresh_from_db()
    assert (hook.url, hook.events, hook.loop_id) == (
        target.url, ["run.succeeded", "run.failed"], loop.pk
    )  # fmt: skip

    # Send a test event: delivered to the receiver, one row in the deliveries.
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    page.get_by_role("button", name="Send test event").click()
    expect(page.get_by_text("Test event (ping) sent")).to_be_visible()
    rows = page.locator("#deliveries tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("ping")
    expect(rows.first).to_contain_text("Succeeded")
    expect(rows.first).to_contain_text("HTTP 200")
    assert [json.loads(body)["event"] for _, body in target.requests] == ["ping"]
    screenshot("webhook")

    # Disable, then enable.
    page.get_by_role("button", name="Disable").click()
    expect(page.locator("#hook-state")).to_have_text("Disabled")
    expect(page.get_by_text("This webhook is disabled")).to_be_visible()
    expect(page.get_by_role("button", name="Send test event")).to_have_count(0)
    hook.refresh_from_db()
    assert hook.active is False
    screenshot("webhook-disabled")
    page.get_by_role("button", name="Enable").click()
    expect(page.locator("#hook-state")).to_have_text("Enabled")
    hook.refresh_from_db()
    assert hook.active is True

    # Delete: it asks first; dismissed, nothing happens.
    questions = []
    page.once("dialog", lambda dialog: questions.append(dialog.message) or dialog.dismiss())
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("#hook-state")).to_have_text("Enabled")
    assert [q.split("?")[0] for q in questions] == ["Delete this webhook"]
    assert Webhook.objects.filter(pk=hook.pk).exists()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("was deleted, with its deliveries")).to_be_visible()
    expect(page.get_by_text("No webhooks.")).to_be_visible()
    assert not Webhook.objects.exists()
