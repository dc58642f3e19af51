"""Security as a person meets it in Chromium: the pages break no rule of the
Content-Security-Policy (htmx and the Ace editor keep working under it), an invitation is sent,
accepted and revoked, and a guessed password locks the login."""

import pytest
from playwright.sync_api import expect

from accounts.models import Invitation, Membership, Role
from runs.models import LogEntry, ScanRequest, Step
from runs.webhooks import webhook_create
from tests.browser.conftest import SCREENSHOTS
from tests.factories import RunFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Playwright adds this before any script of the page, outside the page's policy: it records
# every violation the browser reports, whether or not it also reaches the console.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


@pytest.fixture
def csp_watch(page):
    """Every Content-Security-Policy complaint the browser makes, from the console and from
    securitypolicyviolation events; call it after each page to collect them."""
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.on("pageerror", lambda error: console.append(str(error)))
    page.add_init_script(RECORD_VIOLATIONS)

    def violations() -> list[str]:
        events = page.evaluate("window.__cspViolations.splice(0)")
        noted = [m for m in console if "Content Security Policy" in m or "Content-Security" in m]
        console.clear()
        return noted + events

    return violations


def test_the_main_pages_break_no_rule_of_the_policy(
    live_server, login, page, csp_watch, org, owner, member, loop
):
    run = RunFactory(loop=loop, status="succeeded", output={"greeting": "Hello!"}, duration_ms=9)
    Step.objects.create(run=run, order=1, key="Build greeting#1", name="Build greeting",
                        status="succeeded", output="Hello!", duration_ms=3, line=4)  # fmt: skip
    LogEntry.objects.create(run=run, loop=loop, level="info", message="greeting built")
    waiting = RunFactory(loop=loop, status="waiting")
    scan_step = Step.objects.create(run=waiting, order=1, key="Scan#1", name="Scan", kind="scan")
    scan = ScanRequest.objects.create(organization=org, run=waiting, step=scan_step, subject={})
    hook = webhook_create(organization=org, url="https://hooks.example.com/loops")
    base = live_server.url
    visited: dict[str, list[str]] = {}

    page.goto(f"{base}/login/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto(f"{base}/scan/{scan.pk}")
    expect(page.get_by_role("heading", name="Facial scan")).to_be_visible()
    page.goto(f"{base}/api/docs")
    expect(page.locator(".swagger-ui .info .title")).to_be_visible()  # from this origin, no CDN
    visited["public pages"] = csp_watch()

    login(owner)
    for path in ("/loops/", loop.get_absolute_url(), f"/loops/{loop.slug}/versions/",
                 "/runs/", run.get_absolute_url(), "/settings/tokens/", "/settings/webhooks/",
                 f"/settings/webhooks/{hook.pk}/", "/invitations/"):  # fmt: skip
        page.goto(base + path)
        expect(page.locator("h1").first).to_be_visible()
        visited[path] = csp_watch()

    # The Ace editor builds itself and takes input.
    page.goto(f"{base}/loops/{loop.slug}/editor/")
    # A function: Playwright polls an expression string with eval, which the CSP refuses.
    page.wait_for_function("() => document.querySelector('.django-ace-widget')?.editor")
    page.evaluate("document.querySelector('.django-ace-widget').editor.insert('# checked\\n')")
    expect(page.locator(".ace_content")).to_contain_text("# checked")
    visited["editor"] = csp_watch()

    # htmx swaps: the cron preview as one types, the logs filter.
    page.goto(f"{base}/loops/{loop.slug}/schedules/")
    page.get_by_label("Cron").fill("15 7 * * 1-5")
    expect(page.locator("#cron-preview")).to_contain_text("07:15 UTC")
    page.goto(f"{base}/loops/{loop.slug}/logs/")
    page.get_by_label("Level").select_option("error")
    expect(page.locator(".log-line")).to_have_count(0)
    visited["htmx"] = csp_watch()

    # A role select submits itself (loops.js now, no inline handler).
    page.goto(f"{base}/settings/members/")
    page.get_by_label("Role of mo").select_option("viewer")
    expect(page.get_by_text("mo is now viewer.")).to_be_visible()
    assert Membership.objects.get(organization=org, user=member).role == Role.VIEWER
    visited["members"] = csp_watch()

    # The admin, as operations staff use it.
    login(UserFactory(username="ops", is_staff=True, is_superuser=True))
    for path in ("/admin/", "/admin/accounts/invitation/", f"/admin/runs/run/{run.pk}/change/",
                 "/admin/accounts/apitoken/add/"):  # fmt: skip
        page.goto(base + path)
        expect(page.locator("#content")).to_be_visible()
        visited[path] = csp_watch()

    broken = {where: found for where, found in visited.items() if found}
    assert not broken, broken


def test_invite_accept_and_revoke(live_server, login, page, browser, org, owner, screenshot):
    ana = UserFactory(username="ana", email="ana@example.com")
    ana.set_password("ana-pass-123")
    ana.save()
    base = live_server.url

    login(owner)
    page.goto(f"{base}/settings/members/")
    expect(page.get_by_text("No pending invitations.")).to_be_visible()
    page.get_by_label("Username or e-mail").fill("ana@example.com")
    page.locator("#id_role").select_option("editor")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_role("heading", name="Invitation sent to ana@example.com")).to_be_visible()
    link = page.locator("#invite-link").text_content()
    assert link.startswith(f"{base}/invite/")
    invitation = Invitation.objects.get(organization=org)
    expect(page.locator(f"#invitation-{invitation.pk}")).to_contain_text("ana@example.com")
    screenshot("members-invited")
    assert not Membership.objects.filter(user=ana).exists()  # nobody joins by being invited
    page.reload()  # a plain GET now: the link is gone and nothing is posted again
    expect(page.locator("#invited")).to_have_count(0)
    assert Invitation.objects.filter(organization=org).count() == 1

    # Another invitation, withdrawn before it is used.
    page.get_by_label("Username or e-mail").fill("bob")
    page.get_by_role("button", name="Send invitation").click()
    bob = Invitation.objects.get(organization=org, identifier="bob")
    page.goto(f"{base}/settings/members/")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#invitation-{bob.pk}").get_by_role("button", name="Revoke").click()
    expect(page.get_by_text("The invitation to bob was withdrawn.")).to_be_visible()
    expect(page.locator(f"#invitation-{bob.pk}")).to_have_count(0)

    # Ana, in a browser of her own, follows the link, logs in and accepts.
    context = browser.new_context(viewport={"width": 1366, "height": 860})
    theirs = context.new_page()
    theirs.goto(link)
    expect(theirs.get_by_role("heading", name="Log in")).to_be_visible()
    theirs.get_by_label("Username").fill("ana")
    theirs.get_by_label("Password").fill("ana-pass-123")
    theirs.get_by_role("button", name="Log in").click()
    expect(theirs.get_by_text("olivia invited you to join Acme as editor.")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    theirs.screenshot(path=str(SCREENSHOTS / "invitation.png"), full_page=True)
    theirs.get_by_role("button", name="Accept and join").click()
    expect(theirs.get_by_text("Welcome to Acme: you joined as editor.")).to_be_visible()
    expect(theirs.get_by_role("heading", name="Loops", exact=True)).to_be_visible()
    theirs.goto(link)
    expect(theirs.get_by_text("This invitation has already been used.")).to_be_visible()
    context.close()

    assert Membership.objects.get(organization=org, user=ana).role == Role.EDITOR
    page.goto(f"{base}/settings/members/")
    expect(page.locator("#member-ana")).to_contain_text("ana@example.com")
    expect(page.get_by_text("No pending invitations.")).to_be_visible()


def test_guessed_passwords_lock_the_login_form(live_server, page, owner, screenshot):
    page.set_viewport_size({"width": 1366, "height": 860})
    page.goto(f"{live_server.url}/login/")
    for _ in range(5):
        page.get_by_label("Username").fill("olivia")
        page.get_by_label("Password").fill("guess")
        page.get_by_role("button", name="Log in").click()
        if page.locator("#locked-out").count():
            break
    expect(page.get_by_role("alert")).to_contain_text("Too many failed attempts to log in")
    expect(page.get_by_role("alert")).to_contain_text("Try again in 15 minutes")
    screenshot("login-locked")
    page.get_by_role("link", name="Back to log in").click()
    page.get_by_label("Username").fill("olivia")
    page.get_by_label("Password").fill("pw-123456")  # the right one, still refused
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#locked-out")).to_be_visible()
