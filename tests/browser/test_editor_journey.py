"""A person creates a loop in the editor, test-runs the draft, fixes an error and deploys."""

import pytest
from playwright.sync_api import expect

from loops.models import Loop
from tests.factories import UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOUT = """\
class ShoutLoop(Loop):
    def run(self, event, step):
        name = event.body.get("name", "nobody")
        loud = step.do("Shout", lambda: name.upper() + "!")
        return {"shout": loud}
"""


def set_code(page, code: str) -> None:
    # A function: Playwright polls an expression string with eval, which the CSP refuses.
    page.wait_for_function("() => document.querySelector('.django-ace-widget')?.editor")
    page.evaluate("code => document.querySelector('.django-ace-widget').editor.setValue(code, 1)",
                  code)  # fmt: skip


def test_log_in_create_test_run_and_deploy(worker, live_server, page, owner, screenshot):
    owner.set_password("s3cret-pass")
    owner.save()
    page.set_viewport_size({"width": 1366, "height": 860})
    page.goto(live_server.url + "/")
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    screenshot("login")
    page.get_by_label("Username").fill(owner.username)
    page.get_by_label("Password").fill("s3cret-pass")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Loops", exact=True)).to_be_visible()
    expect(page.get_by_text("No loops yet.")).to_be_visible()

    page.get_by_role("link", name="New loop").click()
    page.get_by_label("Name").fill("Shout Ça Va!")
    expect(page.get_by_label("Slug")).to_have_value("shout-ca-va")  # filled in from the name
    page.get_by_label("Slug").fill("shout")
    page.get_by_label("Name").fill("Loud")
    expect(page.get_by_label("Slug")).to_have_value("shout")  # typed by hand: kept
    page.get_by_label("Name").fill("Shout")
    set_code(page, SHOUT)
    page.get_by_role("button", name="Create and deploy").click()
    expect(page.get_by_text("Created Shout and deployed version 1.")).to_be_visible()
    expect(page.locator("#trigger-url")).to_contain_text("/api/loop/acme/shout")
    # The whole URL is on screen (wrapped, not cut off with an ellipsis).
    fits = "el => el.scrollWidth <= el.clientWidth && el.getBoundingClientRect().right < innerWidth"
    assert page.locator("#trigger-url").evaluate(fits)

    page.get_by_role("link", name="Editor").click()
    set_code(page, SHOUT.replace('"!"', '"!!!"'))
    page.get_by_label("Input (JSON)").fill('{"name": "ana"}')
    page.get_by_role("button", name="Test run").click()
    card = page.locator(".run-card")
    expect(card.locator(".badge")).to_have_text("Succeeded", timeout=30_000)
    expect(card.locator("#test-output")).to_contain_text('"shout": "ANA!!!"')
    expect(card.locator(".tag-test")).to_be_visible()
    screenshot("editor")

    # A broken draft: the test run names the line and the editor marks it.
    set_code(page, SHOUT.replace("loud = step.do", "loud = = step.do"))
    page.get_by_role("button", name="Test run").click()
    expect(page.locator("#test-result")).to_contain_text("Line 4")
    expect(page.locator(".ace_gutter-cell.ace_error")).to_have_text("4")

    set_code(page, SHOUT.replace('"!"', '"!!!"'))
    page.get_by_label("Deploy note").fill("More emphasis")
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_text("Deployed version 2.")).to_be_visible()
    loop = Loop.objects.get(slug="shout")
    assert loop.active_version.number == 2
    assert loop.active_version.note == "More emphasis"
    assert '"!!!"' in loop.active_version.code


def test_viewer_sees_code_but_no_deploy(live_server, login, org, loop):
    from accounts.models import Role
    from tests.factories import MembershipFactory

    viewer = MembershipFactory(organization=org, role=Role.VIEWER, user=UserFactory()).user
    page = login(viewer)
    page.goto(f"{live_server.url}/loops/{loop.slug}/editor/")
    # A function: Playwright polls an expression string with eval, which the CSP refuses.
    page.wait_for_function("() => document.querySelector('.django-ace-widget')?.editor")
    assert "Build greeting" in page.evaluate(
        "document.querySelector('.django-ace-widget').editor.getValue()"
    )
    expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
