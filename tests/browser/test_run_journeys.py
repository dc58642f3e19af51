"""Runs as a person sees them: live status, the timeline, answers, approvals, restarts."""

import json

import pytest
from playwright.sync_api import expect

from loops.models import TestInput
from runs.models import Run, Step
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.factories import LoopFactory, RunFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SLOW = """\
import time

class SlowLoop(Loop):
    def run(self, event, step):
        name = step.do("Prepare", lambda: event.body.get("name", "there"))
        step.do("Work", lambda: time.sleep(5) or "worked")
        return {"greeting": f"Hello, {name}!", "items": list(range(3))}
"""

ASK = """\
class AskLoop(Loop):
    def run(self, event, step):
        name = step.ask("Name", "What is your name?")
        d = step.approve("Ship", f"Ship to {name}?", tool="shipping", tool_input={"to": name},
                         on_reject="stop")
        step.do("Send", lambda: "sent")
        return {"name": name}
"""


def test_trigger_and_watch_run_succeed_without_reload(worker, live_server, login, org, owner,
                                                      screenshot):  # fmt: skip
    loop = LoopFactory(organization=org, slug="slow", name="Slow greeting", code=SLOW)
    page = login(owner)
    page.goto(live_server.url + loop.get_absolute_url())
    page.get_by_label("Input (JSON)").fill('{"name": "Ana"}')
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_text("Run started.")).to_be_visible()
    status = page.locator("#run-status .badge")
    expect(status).to_have_text("Running", timeout=20_000)
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("[data-step=Work]")).to_be_visible(timeout=20_000)
    expect(status).to_have_text("Succeeded", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # updated by HTMX, not a reload
    expect(page.locator("[data-step=Work] .badge")).to_have_text("Succeeded")
    expect(page.locator("#run-duration")).not_to_have_text("—")

    output = page.locator("#run-output")
    formatted = output.locator("[data-view-pane=pretty] .fv")  # a key/value table
    expect(formatted.locator("tr").filter(has_text="greeting")).to_contain_text("Hello, Ana!")
    output.get_by_role("button", name="Raw").click()
    expect(output.locator("[data-view-pane=raw]")).to_be_visible()
    raw = output.locator("[data-view-pane=raw] pre")
    expect(raw).to_contain_text('"greeting":"Hello, Ana!"')  # compact: no spaces, one line
    assert json.loads(raw.text_content()) == {"greeting": "Hello, Ana!", "items": [0, 1, 2]}
    expect(output.locator("[data-view-pane=pretty]")).to_be_hidden()
    # A step with one section (Work's output) shows it open by itself.
    expect(page.locator("[data-step=Work] [data-view-pane=pretty] .fv")).to_have_text("worked")
    screenshot("run-detail")


def test_runs_list_row_updates_live(worker, live_server, login, org, owner, screenshot):
    loop = LoopFactory(organization=org, slug="slow", name="Slow greeting", code=SLOW)
    run_trigger(loop=loop, input={"name": "Bo"}, trigger_type="user", user=owner)
    run = Run.objects.get()
    page = login(owner)
    page.goto(live_server.url + "/runs/")
    badge = page.locator(f"#row-{run.pk} .badge")
    expect(badge).to_have_text("Running", timeout=20_000)
    page.evaluate("window.__sameDocument = true")
    expect(badge).to_have_text("Succeeded", timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    screenshot("runs")
    page.get_by_label("Status").select_option("failed")
    expect(page.get_by_text("No matching runs.")).to_be_visible()
    assert "status=failed" in page.url  # the filter lives in the URL


def _wait_for_person(run):
    def waiting():
        run.refresh_from_db()
        return run.status == "waiting" and run.pending

    wait_until(waiting, timeout=30)


def test_answer_a_question_then_approve(worker, live_server, login, org, owner, screenshot):
    loop = LoopFactory(organization=org, slug="ship", name="Ship", code=ASK)
    run = run_trigger(loop=loop, input={}, trigger_type="user", user=owner)
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    expect(page.get_by_role("heading", name="Waiting for an answer")).to_be_visible(timeout=30_000)
    expect(page.locator("#pending .prompt")).to_have_text("What is your name?")
    page.get_by_label("Answer").fill("Ana")
    page.get_by_role("button", name="Send answer").click()
    expect(page.get_by_text("Answer sent.")).to_be_visible()
    expect(page.get_by_role("heading", name="Waiting for approval")).to_be_visible(timeout=30_000)
    expect(page.locator("#pending .prompt")).to_have_text("Ship to Ana?")
    expect(page.locator("#pending pre.value")).to_have_text('{\n  "to": "Ana"\n}')  # JSON
    screenshot("run-approval")
    page.get_by_label("Reason").fill("Looks right")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator("[data-step=Send] .badge")).to_have_text("Succeeded")
    expect(page.locator("#run-output tr").filter(has_text="name")).to_contain_text("Ana")


def test_reject_ends_run_succeeded_with_rejected_step(worker, live_server, login, org, owner):
    loop = LoopFactory(organization=org, slug="ship", name="Ship", code=ASK)
    run = run_trigger(loop=loop, input={}, trigger_type="user", user=owner)
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    page.get_by_label("Answer").fill("Zed")
    page.get_by_role("button", name="Send answer").click()
    expect(page.locator("#pending .prompt")).to_have_text("Ship to Zed?", timeout=30_000)
    page.get_by_label("Reason").fill("Not today")
    page.get_by_role("button", name="Reject").click()
    expect(page.get_by_text("Rejected. The run stops.")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator("[data-step=Ship] .badge")).to_have_text("Rejected")
    # The step the rejection stopped the program before is shown skipped.
    expect(page.locator("[data-step=Send] .badge")).to_have_text("Skipped")
    expect(page.locator("[data-step=Send]")).to_contain_text("not run: the rejection stopped")
    page.get_by_role("link", name="Rejected").click()
    expect(page.locator("#timeline > li")).to_have_count(1)
    expect(page.locator("[data-step=Ship]")).to_contain_text("Not today")


def test_restart_a_run(worker, live_server, login, org, owner, loop):
    first = run_trigger(loop=loop, input={"name": "Rae"}, trigger_type="user", user=owner)
    wait_until(lambda: Run.objects.get(pk=first.pk).is_ended, timeout=30)
    page = login(owner)
    page.goto(live_server.url + first.get_absolute_url())
    page.get_by_role("button", name="Restart").click()
    expect(page.get_by_text("Restarted: this is the new run.")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    new = Run.objects.exclude(pk=first.pk).get()
    assert new.restarted_from_id == first.pk
    assert new.pk in page.url
    expect(page.locator("#run-output")).to_contain_text("Hello, Rae!")


def test_save_a_large_step_output_to_the_library_once_loaded(live_server, login, owner, loop):
    run = RunFactory(loop=loop, status="succeeded")
    output = {"rows": ["r" * 100 for _ in range(300)]}  # over one 20,000-character chunk
    Step.objects.create(run=run, order=1, key="Fetch#1", name="Fetch", status="succeeded",
                        output=output)  # fmt: skip
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    fetch = page.locator("[data-step=Fetch]")
    offer = fetch.get_by_text("Save Output to Library…")
    expect(offer).to_be_hidden()  # not before the whole output is in the page
    fetch.get_by_role("link", name="Load all").first.click()
    expect(offer).to_be_visible()
    offer.click()
    save = fetch.get_by_role("button", name="Save Output to Library")
    expect(fetch.get_by_label("Variable path")).to_have_value("step.Fetch.output")
    fetch.get_by_label("Library name").fill("Big fetch")
    save.click()
    done = "Saved the output of “Fetch” as test input “Big fetch”."
    expect(page.get_by_text(done)).to_be_visible()
    saved = TestInput.objects.get(loop=loop)
    assert saved.input == {"step": {"Fetch": {"output": output}}}
