"""Live pages as an operator watches them: what they opened stays open, new runs arrive,
durations tick, and a run's logs are on its page."""

import re

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs.models import Run
from runs.services import run_send_event, run_trigger
from tests.conftest import wait_until
from tests.factories import LoopFactory, RunFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WAITS = """\
class LiveLoop(Loop):
    def run(self, event, step):
        found = step.do("Prepare", lambda: {"name": "Ana", "items": [1, 2, 3]})
        print("prepared", found["name"])
        step.wait_for_event("Go", "go")
        step.do("Finish", lambda: "finished")
        print("finished")
        return {"ok": True}
"""


def _waiting(run):
    def check():
        run.refresh_from_db()
        return run.status == "waiting"

    wait_until(check, timeout=30)


def test_live_updates_keep_what_the_reader_opened(worker, live_server, login, org, owner,
                                                  screenshot):  # fmt: skip
    loop = LoopFactory(organization=org, slug="live", name="Live", code=WAITS)
    run = run_trigger(loop=loop, input={}, trigger_type="user", user=owner)
    _waiting(run)
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    prepare = page.locator("[data-step=Prepare]")
    output = prepare.locator("details.section").filter(has_text="Output")
    expect(output).to_have_attribute("open", "")  # its only section opens by itself
    output.locator(":scope > summary").click()  # the reader closes it
    expect(output).not_to_have_attribute("open", "")
    box = page.locator("#run-input [data-value-box]")
    box.get_by_role("button", name="Raw").click()
    expect(box.locator("[data-view-pane=raw]")).to_be_visible()
    raw = box.locator("[data-view-pane=raw] pre")
    raw.evaluate("el => window.getSelection().selectAllChildren(el)")
    expect(page.locator("#run-logs")).to_contain_text("prepared Ana")
    page.evaluate("window.__sameDocument = true")

    run_send_event(run=run, type="go", payload={"from": "test"})
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator("[data-step=Finish] .badge")).to_have_text("Succeeded")
    assert page.evaluate("window.__sameDocument") is True
    # What the reader opened and chose is as they left it after the updates.
    expect(output).not_to_have_attribute("open", "")
    expect(box.locator("[data-view-pane=raw]")).to_be_visible()
    expect(box.locator("[data-view-pane=pretty]")).to_be_hidden()
    assert page.evaluate("String(window.getSelection())") == raw.text_content()  # selection too
    # The logs are live, and a print() before the wait is not logged again on the replay.
    logs = page.locator("#run-logs .log-line")
    expect(logs.filter(has_text="finished")).to_have_count(1)
    expect(logs.filter(has_text="prepared Ana")).to_have_count(1)
    screenshot("run-live-logs")

    # An ended run stops polling.
    requests = []
    page.on("request", lambda r: requests.append(r.url) if "since=" in r.url else None)
    page.wait_for_timeout(2500)
    assert requests == []


def test_a_failed_runs_error_is_in_its_logs(worker, live_server, login, org, owner):
    code = """\
class Failing(Loop):
    def run(self, event, step):
        print("starting")
        step.do("Charge", lambda: 1 / 0, retries=0)
"""
    loop = LoopFactory(organization=org, slug="failing", name="Failing", code=code)
    run = run_trigger(loop=loop, input={}, trigger_type="user", user=owner)
    wait_until(lambda: Run.objects.get(pk=run.pk).is_ended, timeout=30)
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    lines = page.locator("#run-logs .log-line")
    expect(lines).to_have_count(2)
    expect(lines.nth(0)).to_contain_text("starting")
    expect(lines.nth(1)).to_contain_text("ERROR")
    expect(lines.nth(1)).to_contain_text("Step 'Charge' failed: ZeroDivisionError")
    expect(lines.nth(1).locator(".tag")).to_have_text("Charge")


def test_new_runs_appear_live_and_rows_open_their_run(live_server, login, org, owner, loop,
                                                      screenshot):  # fmt: skip
    RunFactory(loop=loop, status="succeeded")
    page = login(owner)
    page.goto(live_server.url + f"/loops/{loop.slug}/runs/?status=waiting")
    expect(page.get_by_text("No matching runs.")).to_be_visible()
    page.evaluate("window.__sameDocument = true")
    RunFactory(loop=loop, status="failed")  # outside the filter: never shown
    running = RunFactory(loop=loop, status="waiting", started_at=timezone.now())
    row = page.locator(f"#row-{running.pk}")
    expect(row).to_be_visible(timeout=10_000)
    expect(page.locator(".run-row")).to_have_count(1)
    assert page.evaluate("window.__sameDocument") is True
    # Its duration ticks on in the page, without a request.
    duration = row.locator("td.num")
    first = duration.text_content()
    expect(duration).not_to_have_text(first, timeout=5_000)
    assert re.fullmatch(r"\d+(\.\d)? s|\d+ ms|\d+ min \d+ s", duration.text_content().strip())
    screenshot("runs-live")
    row.locator("td").first.click()  # anywhere on the row, not only its link
    expect(page).to_have_url(re.compile(rf"/runs/{running.pk}/$"))
