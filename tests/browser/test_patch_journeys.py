"""Patch and continue on the run page, in Chromium: retry from a step, complete a step with an
output (a mistake shown in the form, then the run carries on), fire a sleeping step, send the
awaited event. The real worker runs the runs."""

import json

import pytest
from playwright.sync_api import expect

from accounts.models import AuditEvent
from runs.models import Run, Step
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.factories import LoopFactory
from tests.test_patches import CHECKED, WAITS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _run_in(loop, status: str, body=None) -> Run:
    run = run_trigger(loop=loop, input=body or {}, trigger_type="api_token")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == status, timeout=60)
    run.refresh_from_db()
    return run


class Dialogs:
    """Answers every confirmation the page asks (accept, or dismiss while `accept` is False)
    and keeps the questions."""

    def __init__(self, page, *, accept: bool = True):
        self.asked: list[str] = []
        self.accept = accept
        page.on("dialog", self._answer)

    def _answer(self, dialog) -> None:
        self.asked.append(dialog.message)
        if self.accept:
            dialog.accept()
        else:
            dialog.dismiss()


def _output(run: Run, name: str):
    return Step.objects.get(run=run, name=name).output


def test_retry_from_a_step_asks_first_then_the_run_succeeds(worker, live_server, login, org,
                                                           owner, screenshot):  # fmt: skip
    loop = LoopFactory(organization=org, slug="checked", name="Checked", code=CHECKED)
    run = _run_in(loop, "failed")
    drawn, second = _output(run, "Draw"), _output(run, "Second")
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    entry = page.locator("li[data-step=Second]")
    retry = entry.get_by_role("button", name="Retry from here")
    expect(retry).to_be_visible()
    screenshot("run-patch-failed")

    dialogs = Dialogs(page, accept=False)  # "Cancel" in the confirmation: nothing happens
    retry.click()
    wait_until(lambda: dialogs.asked)
    assert "Retry from “Second”?" in dialogs.asked[0]
    assert "on v1" in dialogs.asked[0]
    expect(page.locator("#run-status .badge")).to_have_text("Failed")
    assert Run.objects.get(pk=run.pk).attempt == 1
    assert not AuditEvent.objects.exists()

    dialogs.accept = True
    retry.click()
    expect(page.get_by_text("Retrying from “Second” on v1")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    expect(page.get_by_text("attempt 2")).to_be_visible()
    run.refresh_from_db()
    assert run.output["drawn"] == drawn  # replayed
    assert run.output["second"] != second  # ran again
    assert AuditEvent.objects.get().action == "run.retry_from"


def test_complete_a_failed_step_shows_a_mistake_then_resumes(worker, live_server, login, org,
                                                            owner, screenshot):  # fmt: skip
    loop = LoopFactory(organization=org, slug="checked", name="Checked", code=CHECKED)
    run = _run_in(loop, "failed")
    page = login(owner)
    page.goto(live_server.url + run.get_absolute_url())
    entry = page.locator("li[data-step=Check]")
    entry.get_by_text("Complete with output…").click()
    field = entry.get_by_label("Output (JSON)")
    field.fill('{"by": hand}')
    dialogs = Dialogs(page)
    entry.get_by_role("button", name="Complete step").click()
    alert = entry.get_by_role("alert")
    expect(alert).to_contain_text("not valid JSON")
    expect(entry.get_by_label("Output (JSON)")).to_have_value('{"by": hand}')  # kept as typed
    assert "Complete “Check” with this output?" in dialogs.asked[0]
    screenshot("run-patch-complete-error")
    assert Run.objects.get(pk=run.pk).status == "failed"

    entry.get_by_label("Output (JSON)").fill('{"by": "hand"}')
    entry.get_by_role("button", name="Complete step").click()
    expect(page.get_by_text("“Check” completed with your output")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    expect(page.locator("li[data-step=Check] .badge")).to_have_text("Succeeded")
    output = page.locator("#run-output [data-view-pane=raw] pre")
    assert json.loads(output.text_content())["checked"] == {"by": "hand"}
    assert AuditEvent.objects.get().details["output"] == {"by": "hand"}


def test_fire_a_sleeping_step_and_send_the_awaited_event(worker, live_server, login, org,
                                                        owner):  # fmt: skip
    loop = LoopFactory(organization=org, slug="waits", name="Waits", code=WAITS)
    sleeping = _run_in(loop, "waiting", {"kind": "sleep"})
    page = login(owner)
    Dialogs(page)
    page.goto(live_server.url + sleeping.get_absolute_url())
    page.locator("li[data-step=Nap]").get_by_role("button", name="Fire now").click()
    expect(page.get_by_text("“Nap” woke now")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)

    waiting = _run_in(loop, "waiting", {"kind": "event"})
    page.goto(live_server.url + waiting.get_absolute_url())
    form = page.locator("#event-form")
    expect(form.get_by_label("Event type")).to_have_value("go")
    form.get_by_label("Payload (JSON)").fill("[1, 2")
    form.get_by_role("button", name="Send event").click()
    expect(page.locator("#event-form").get_by_role("alert")).to_contain_text("not valid JSON")
    page.locator("#event-form").get_by_label("Payload (JSON)").fill('{"doc": 7}')
    page.locator("#event-form").get_by_role("button", name="Send event").click()
    expect(page.get_by_text("Event “go” sent; the run carries on.")).to_be_visible()
    expect(page.locator("#run-status .badge")).to_have_text("Succeeded", timeout=30_000)
    waiting.refresh_from_db()
    assert waiting.output["got"] == {"doc": 7}
    assert [e.action for e in AuditEvent.objects.order_by("at")] == ["step.fire", "run.event"]
