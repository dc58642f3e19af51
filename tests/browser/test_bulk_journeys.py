"""Bulk actions as a person does them: filter the runs list, see the dry-run count, confirm,
and watch the job's progress live until it is done (or abort it)."""

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from runs import bulk, dispatch
from runs.models import BulkJob, Run, Step
from tests.factories import RunFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def waiting(loop, n: int) -> list[Run]:
    runs = RunFactory.create_batch(
        n, loop=loop, status="waiting", started_at=timezone.now() - timedelta(seconds=5),
        pending={"kind": "event", "eventType": "go"},
    )  # fmt: skip
    for run in runs:
        Step.objects.create(run=run, order=0, key="Wait#1", name="Wait", kind="event",
                            status="waiting")  # fmt: skip
    return runs


@pytest.fixture
def held_back(monkeypatch):
    """The first task of each job is held back (the page first shows the job with nothing done
    yet), then handed to the worker with release()."""
    held = []
    real = dispatch.queue_bulk_work
    monkeypatch.setattr(dispatch, "queue_bulk_work", lambda *args: held.append(args))

    def release():
        monkeypatch.setattr(dispatch, "queue_bulk_work", real)
        for args in held:
            real(*args)

    return release


@pytest.fixture
def confirmations(page):
    asked = []

    def confirm(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    return asked


def test_filter_the_runs_bulk_cancel_them_and_watch_the_job_finish(
    worker, live_server, login, org, owner, loop, monkeypatch, held_back, confirmations,
    screenshot,
):  # fmt: skip
    monkeypatch.setitem(bulk.CHUNK_SIZES, "cancel", 4)  # a few chunks
    stuck = waiting(loop, 14)
    done = RunFactory.create_batch(3, loop=loop, status="succeeded")
    page = login(owner)
    page.goto(live_server.url + "/runs/")
    page.get_by_label("Status").select_option("waiting")
    expect(page.locator("#results .pager, #results tbody tr").first).to_be_visible()
    expect(page).to_have_url(re.compile(r"/runs/\?status=waiting"))
    page.get_by_label("Bulk action").select_option("cancel")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#bulk-question")).to_have_text("Cancel 14 matching runs?")
    expect(page.locator("#bulk-preview")).to_contain_text("Runs with status waiting")
    screenshot("bulk-preview")
    page.get_by_role("button", name="Cancel 14 runs").click()

    expect(page.locator("#bulk-status")).to_have_text("Running")
    assert confirmations == ["Cancel 14 matching runs? This cannot be undone."]
    job = BulkJob.objects.get()
    assert page.url == live_server.url + job.get_absolute_url()
    expect(page.locator("#bulk-total")).to_have_text("14")
    expect(page.locator("#bulk-done")).to_have_text("0")
    page.evaluate("window.__sameDocument = true")
    held_back()  # the worker takes the job now
    expect(page.locator("#bulk-status")).to_have_text("Done", timeout=30_000)
    expect(page.locator("#bulk-done")).to_have_text("14")
    expect(page.locator("#bulk-percent")).to_have_text("100 %")
    assert page.evaluate("window.__sameDocument") is True  # updated by HTMX, not a reload
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)
    screenshot("bulk-job")
    assert set(
        Run.objects.filter(pk__in=[r.pk for r in stuck]).values_list("status", flat=True)
    ) == {"cancelled"}
    assert set(
        Run.objects.filter(pk__in=[r.pk for r in done]).values_list("status", flat=True)
    ) == {"succeeded"}


def test_abort_a_bulk_restart_from_its_page(
    live_server, login, org, owner, loop, held_back, confirmations
):  # fmt: skip
    RunFactory.create_batch(3, loop=loop, status="failed", error_message="boom")
    page = login(owner)
    page.goto(live_server.url + f"/loops/{loop.slug}/runs/")
    page.get_by_label("Bulk action").select_option("resume")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#bulk-question")).to_have_text("Resume 3 matching runs?")
    page.get_by_role("button", name="Resume 3 runs").click()
    expect(page.locator("#bulk-status")).to_have_text("Running")
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("#bulk-status")).to_have_text("Aborted")
    expect(page.get_by_text("Aborted after 0 of 3 runs")).to_be_visible()
    assert confirmations[-1].startswith("Abort this bulk action?")
    job = BulkJob.objects.get()
    assert (job.status, job.filter) == ("aborted", {"loop": loop.slug})
    assert set(Run.objects.values_list("status", flat=True)) == {"failed"}
