"""A person limits how many runs of a loop go at once, from the loop's page."""

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_set_a_bad_then_a_good_concurrency_limit_and_clear_it(
    live_server, login, owner, loop, screenshot
):
    page = login(owner)
    page.goto(live_server.url + loop.get_absolute_url())
    card = page.locator("#loop-settings")
    expect(card).to_contain_text("waiting runs hold no slot")
    field = card.get_by_label("Concurrency limit")
    save = card.get_by_role("button", name="Save settings")

    # The browser's own check would stop 0 before it is sent; the server must refuse it too.
    field.evaluate("input => input.removeAttribute('min')")
    field.fill("0")
    save.click()
    expect(page.locator("#loop-settings .field-error")).to_contain_text("greater than or equal")
    loop.refresh_from_db()
    assert loop.concurrency_limit is None
    screenshot("loop-settings-error")

    page.locator("#loop-settings").get_by_label("Concurrency limit").fill("5")
    page.locator("#loop-settings").get_by_role("button", name="Save settings").click()
    expect(page.get_by_text("Greeting runs at most 5 at once.")).to_be_visible()
    expect(page.locator("#loop-settings").get_by_label("Concurrency limit")).to_have_value("5")
    loop.refresh_from_db()
    assert loop.concurrency_limit == 5
    screenshot("loop-settings")

    page.locator("#loop-settings").get_by_label("Concurrency limit").fill("")
    page.locator("#loop-settings").get_by_role("button", name="Save settings").click()
    expect(page.get_by_text("Greeting has no concurrency limit of its own.")).to_be_visible()
    loop.refresh_from_db()
    assert loop.concurrency_limit is None
