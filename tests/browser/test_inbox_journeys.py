"""The inbox as an operator uses it: the count in the navigation, the live list, approving
several runs at once with one reason, and answering a question inline."""

import pytest
from playwright.sync_api import expect

from accounts.models import Role
from runs.models import Run, RunStatus, Step
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.factories import LoopFactory, MembershipFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

DEPLOY = """\
class DeployLoop(Loop):
    def run(self, event, step):
        service = event.body["service"]
        if event.body.get("ask"):
            region = step.ask("Region", f"Which region for {service}?")
            return {"region": region}
        decision = step.approve(
            "Deploy", f"Deploy {service} to production?", tool="deploy",
            tool_input={"service": service, "env": "prod"},
            assignee=event.body.get("assignee"),
        )
        step.do("Release", lambda: f"released {service}")
        return {"service": service, "decision": decision}
"""


def _waiting(loop, body) -> Run:
    run = run_trigger(loop=loop, input=body, trigger_type="api_token")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=60)
    return run


def test_approve_two_runs_together_from_the_inbox(worker, live_server, login, org, owner,
                                                  screenshot):  # fmt: skip
    loop = LoopFactory(organization=org, slug="deploy", name="Deploy", code=DEPLOY)
    page = login(owner)
    page.goto(live_server.url + "/loops/")
    count = page.locator("#inbox-count")
    expect(count).to_be_hidden()  # nobody is waiting yet
    api, web = _waiting(loop, {"service": "api"}), _waiting(loop, {"service": "web"})
    question = _waiting(loop, {"service": "db", "ask": True})
    expect(count).to_have_text("3", timeout=15_000)  # the badge polls by itself

    page.get_by_role("link", name="Inbox").click()
    expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    rows = page.locator("#inbox-results tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_contain_text("Deploy api to production?")  # longest wait first
    expect(rows.nth(0).locator("pre")).to_contain_text('"env": "prod"')
    expect(rows.nth(2)).to_contain_text("Which region for db?")
    screenshot("inbox")

    page.evaluate("window.__sameDocument = true")
    page.get_by_label(f"Select Deploy ({api.pk})").check()
    page.get_by_label(f"Select Deploy ({web.pk})").check()
    # A fourth run arrives while the reader selects: the list grows live, the boxes stay ticked.
    late = _waiting(loop, {"service": "cache"})
    expect(rows).to_have_count(4, timeout=15_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.get_by_label(f"Select Deploy ({api.pk})")).to_be_checked()
    expect(page.get_by_label(f"Select Deploy ({web.pk})")).to_be_checked()
    expect(page.get_by_label(f"Select Deploy ({late.pk})")).not_to_be_checked()

    asked = []

    def confirm(dialog):
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", confirm)
    page.get_by_label("Reason for the selected approvals").fill("Release train 42")
    page.get_by_role("button", name="Approve selected").click()
    expect(page.get_by_text("Approved 2 approvals; their runs carry on.")).to_be_visible()
    assert asked == ["Approve every selected approval? Their runs carry on."]

    for run in (api, web):
        wait_until(lambda run=run: Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, 60)
        run.refresh_from_db()
        assert run.output["decision"] == {"approved": True, "reason": "Release train 42",
                                          "by": owner.username}  # fmt: skip
        assert Step.objects.get(run=run, name="Release").status == "succeeded"
    expect(rows).to_have_count(2)
    expect(count).to_have_text("2")

    answer = page.get_by_label(f"Answer to Region ({question.pk})")
    answer.fill("eu-west-1")
    answer.press("Enter")
    expect(page.get_by_text(f"Answer sent to {question.pk}; the run carries on.")).to_be_visible()
    wait_until(lambda: Run.objects.get(pk=question.pk).status == RunStatus.SUCCEEDED, 60)
    assert Run.objects.get(pk=question.pk).output == {"region": "eu-west-1"}
    expect(rows).to_have_count(1)
    expect(count).to_have_text("1")


def test_an_editor_sees_an_approval_assigned_to_admins_read_only(worker, live_server, login, org):
    loop = LoopFactory(organization=org, slug="deploy", name="Deploy", code=DEPLOY)
    editor = MembershipFactory(
        organization=org, role=Role.EDITOR, user=UserFactory(username="eddie")
    ).user
    run = _waiting(loop, {"service": "api", "assignee": "role:admin"})
    page = login(editor)
    page.goto(live_server.url + "/inbox/")
    row = page.locator(f"#item-{run.pk}")
    expect(row).to_contain_text("Read-only: assigned to role:admin")
    expect(row.get_by_role("checkbox")).to_have_count(0)
    page.goto(live_server.url + run.get_absolute_url())
    expect(page.locator("#assigned-to")).to_have_text("Assigned to admins (read-only for you)")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
