"""Versions, tokens, the other pages, and tenancy, as a person in a browser meets them."""

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from accounts.models import ApiToken
from loops.schedules import schedule_create
from loops.services import loop_deploy
from runs.models import LogEntry, Step
from tests.factories import LoopFactory, RunFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_roll_back_a_version(live_server, login, owner, loop, screenshot):
    code = loop.active_version.code.replace("Hello", "Howdy")
    loop_deploy(loop=loop, code=code, author=owner, note="Cowboy greeting")
    page = login(owner)
    page.goto(f"{live_server.url}/loops/{loop.slug}/versions/")
    expect(page.locator("#version-2")).to_contain_text("Active")
    expect(page.locator("#diff .diff-add")).to_contain_text("Howdy")
    expect(page.locator("#diff .diff-del")).to_contain_text("Hello")
    screenshot("versions")
    questions = []
    page.once("dialog", lambda dialog: questions.append(dialog.message) or dialog.dismiss())
    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.locator("#version-1")).not_to_contain_text("Active")
    assert questions == [
        "Make v1 the active version? New runs use its code; runs already started keep theirs."
    ]
    loop.refresh_from_db()
    assert loop.active_version.number == 2  # dismissed: nothing changed

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.get_by_text("Version 1 is active again.")).to_be_visible()
    expect(page.locator("#version-1")).to_contain_text("Active")
    loop.refresh_from_db()
    assert loop.active_version.number == 1
    assert loop.versions.count() == 2  # history is kept
    # The diff now shows what the rollback took away, and v2's button says where it goes.
    expect(page.get_by_text("v2 → v1")).to_be_visible()
    expect(page.locator("#diff .diff-add")).to_contain_text("Hello")
    expect(page.get_by_role("button", name="Roll forward to v2")).to_be_visible()


def test_create_and_revoke_a_token(live_server, login, owner, screenshot):
    page = login(owner)
    page.goto(live_server.url + "/settings/tokens/")
    expect(page.get_by_text("No tokens yet.")).to_be_visible()
    page.get_by_label("Name").fill("Deploy bot")
    page.get_by_label("Scope").select_option("trigger")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token-value").text_content()
    assert secret.startswith("lp_")
    token = ApiToken.objects.get(name="Deploy bot")
    assert token.token_hash == ApiToken.hash(secret)
    expect(page.locator(f"#token-{token.pk}")).to_contain_text(token.prefix)
    screenshot("tokens")
    page.reload()
    expect(page.locator("#new-token")).to_have_count(0)  # shown once only
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#token-{token.pk}").get_by_role("button", name="Revoke").click()
    expect(page.locator(f"#token-{token.pk} .badge")).to_have_text("Revoked")
    token.refresh_from_db()
    assert token.status == "revoked"


def test_member_of_another_organization_gets_404(live_server, login, outsider, loop, screenshot):
    run = RunFactory(loop=loop)
    page = login(outsider)
    for path in (loop.get_absolute_url(), f"/loops/{loop.slug}/editor/",
                 f"/loops/{loop.slug}/versions/", f"/loops/{loop.slug}/logs/",
                 f"/loops/{loop.slug}/runs/", run.get_absolute_url()):  # fmt: skip
        response = page.goto(live_server.url + path)
        assert response.status == 404, path
        expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    screenshot("not-found")
    page.goto(live_server.url + "/runs/")
    expect(page.get_by_text("No runs yet.")).to_be_visible()


def test_pages_at_a_glance(live_server, login, org, owner, member, loop, screenshot):
    """The remaining main pages render with real data; each is saved for the docs."""
    other = LoopFactory(organization=org, slug="nightly-report", name="Nightly report")
    now = timezone.now()
    for day in range(1, 14):  # two weeks of history for the chart
        for i in range((day * 7) % 5 + 1):
            when = now - timedelta(days=day, minutes=i)
            status = "failed" if (day + i) % 6 == 0 else "succeeded"
            ms = 120 + (day * 37 + i * 53) % 900
            RunFactory(loop=loop, status=status, created_at=when, started_at=when, duration_ms=ms)
    for status, ms in (("succeeded", 180), ("succeeded", 240), ("failed", 950), ("waiting", None)):
        run = RunFactory(loop=loop, status=status, duration_ms=ms, cpu_time_ms=12, started_at=now)
        Step.objects.create(run=run, order=1, key="Build greeting#1", name="Build greeting",
                            status="succeeded" if status != "failed" else "failed",
                            output="Hello!", duration_ms=3, line=4)  # fmt: skip
        LogEntry.objects.create(run=run, loop=loop, level="info", message=f"greeting for {status}")
    LogEntry.objects.create(run=run, loop=loop, level="error", message="upstream said no")
    RunFactory(loop=other, mode="test", trigger_type="user", duration_ms=75)
    schedule_create(loop=loop, cron="0 6 * * 1-5", timezone_name="Europe/Paris")
    page = login(owner)

    page.goto(live_server.url + "/loops/")
    expect(page.get_by_role("link", name="Nightly report")).to_be_visible()
    screenshot("loops")

    page.goto(live_server.url + loop.get_absolute_url())
    expect(page.locator(".chart .seg-succeeded").first).to_be_visible()
    screenshot("overview")

    page.goto(live_server.url + run.get_absolute_url())
    page.locator("[data-step='Build greeting']").get_by_role("link", name="Edit").click()
    # A function: Playwright polls an expression string with eval, which the CSP refuses.
    page.wait_for_function("() => document.querySelector('.django-ace-widget')?.editor")
    expect(page).to_have_url(f"{live_server.url}/loops/{loop.slug}/editor/?line=4&version=1")
    assert (
        page.evaluate("document.querySelector('.django-ace-widget').editor.getCursorPosition().row")
        == 3
    )  # Ace counts rows from 0: the cursor is on line 4

    failed = RunFactory(
        loop=loop, status="failed", started_at=now, duration_ms=1840, cpu_time_ms=31,
        error_type="HttpError", error_step="Fetch invoices",
        error_message="GET https://billing.example.com/invoices answered 503",
    )  # fmt: skip
    Step.objects.create(
        run=failed, order=1, key="Load customer#1", name="Load customer", status="succeeded",
        output={"id": 42, "plan": "pro"}, duration_ms=12,
    )  # fmt: skip
    Step.objects.create(
        run=failed, order=2, key="Fetch invoices#1", name="Fetch invoices", kind="http",
        status="failed", attempts=3, duration_ms=1790, line=9,
        input={"method": "GET", "url": "https://billing.example.com/invoices"},
        error={"message": "Service Unavailable", "status": 503,
               "headers": {"content-type": "application/json", "retry-after": "30"},
               "body": {"error": "maintenance", "until": "12:00Z"}},
    )  # fmt: skip
    page.goto(live_server.url + failed.get_absolute_url())
    expect(page.locator("[data-step='Fetch invoices']")).to_contain_text("HTTP 503")
    expect(page.locator("[data-step='Fetch invoices']")).to_contain_text("retry-after")
    expect(page.locator("[data-step='Fetch invoices']")).to_contain_text("3 attempts")
    screenshot("run-failed")

    page.goto(f"{live_server.url}/loops/{loop.slug}/logs/")
    expect(page.locator(".log-line")).to_have_count(5)
    page.get_by_label("Level").select_option("error")
    expect(page.locator(".log-line")).to_have_count(1)
    expect(page.locator(".log-line")).to_contain_text("upstream said no")
    screenshot("logs")

    page.goto(f"{live_server.url}/loops/{loop.slug}/schedules/")
    page.get_by_label("Cron").fill("30 9 * * 1-5")
    expect(page.locator("#cron-preview li")).to_have_count(5)
    expect(page.locator("#cron-preview")).to_contain_text("09:30 UTC")
    page.get_by_role("button", name="Add schedule").click()
    expect(page.get_by_text("Schedule created.")).to_be_visible()
    screenshot("schedules")

    page.goto(live_server.url + "/settings/members/")
    expect(page.locator("#member-mo")).to_contain_text("mo")
    screenshot("members")

    page.goto(live_server.url + "/settings/webhooks/")
    page.get_by_label("URL").fill("https://hooks.example.com/loops")
    page.get_by_label("run.failed").check()
    page.get_by_role("button", name="Add webhook").click()
    expect(page.get_by_text("Webhook created.")).to_be_visible()
    expect(page.locator("#hook-secret")).to_contain_text("whsec_")
    screenshot("webhook")


def test_the_audit_log_shows_who_did_what(live_server, login, owner, loop, screenshot):
    loop_deploy(loop=loop, code=loop.active_version.code.replace("Hello", "Hey"))
    page = login(owner)
    page.goto(f"{live_server.url}/loops/{loop.slug}/versions/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.get_by_text("Version 1 is active again.")).to_be_visible()
    page.get_by_role("link", name="Audit log").click()
    row = page.locator("table.audit tbody tr").first
    expect(row).to_contain_text("loop.rollback")
    expect(row).to_contain_text("olivia")
    expect(row).to_contain_text("127.0.0.1")
    screenshot("audit")
    page.get_by_label("Action").select_option("token.revoke")
    expect(page.get_by_text("No matching entries.")).to_be_visible()
    assert "action=token.revoke" in page.url
