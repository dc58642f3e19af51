"""The web pages through Django's test client: what a person sees, roles and tenancy."""

import html
import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Invitation, Membership, Role
from loops import models as loop_models
from runs.models import LogEntry, Run, Step
from tests.engine_helpers import execute, run_program
from tests.factories import MembershipFactory, RunFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_pages_require_login(client, loop):
    response = client.get(reverse("loops:list"))
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_loops_list_overview_and_chart(owner_client, loop):
    RunFactory(loop=loop, duration_ms=120)
    RunFactory(loop=loop, status="failed", duration_ms=900)
    page = owner_client.get(reverse("loops:list")).content.decode()
    assert "Greeting" in page
    overview = owner_client.get(loop.get_absolute_url()).content.decode()
    assert "/api/loop/acme/greeting" in overview
    assert "curl -X POST" in overview
    assert "seg seg-succeeded" in overview
    assert "seg seg-failed" in overview
    assert "120 ms" in overview  # p50 over the succeeded runs


def test_deploy_shows_validation_error_at_its_line(owner_client, loop):
    code = "class A(Loop):\n    def run(self, event, step):\n        return (\n"
    response = owner_client.post(
        reverse("loops:editor", args=[loop.slug]), {"code": code, "note": "broken"}
    )
    assert response.status_code == 422
    assert 'data-error-line="' in response.content.decode()
    assert loop.versions.count() == 1


def test_deploy_creates_next_version(owner_client, loop):
    code = loop.active_version.code.replace("Hello", "Hi")
    response = owner_client.post(
        reverse("loops:editor", args=[loop.slug]), {"code": code, "note": "friendlier"}
    )
    assert response.status_code == 302
    loop.refresh_from_db()
    assert loop.active_version.number == 2
    assert loop.active_version.note == "friendlier"
    diff = owner_client.get(reverse("loops:versions", args=[loop.slug])).content.decode()
    assert "diff-add" in diff
    assert "Hi, " in diff


def test_runs_list_filters_and_empty_state(owner_client, loop):
    RunFactory(loop=loop, status="failed")
    RunFactory(loop=loop, status="succeeded")
    url = reverse("runs:list")
    assert owner_client.get(url).content.decode().count('class="run-row"') == 2
    failed = owner_client.get(url, {"status": "failed"}).content.decode()
    assert failed.count('class="run-row"') == 1
    none = owner_client.get(url, {"status": "cancelled"}).content.decode()
    assert "No matching runs." in none
    errors = owner_client.get(url, {"has_errors": "on"}).content.decode()
    assert errors.count('class="run-row"') == 1


def test_run_detail_pages_long_arrays_and_huge_values(owner_client, loop):
    run = RunFactory(loop=loop, output=list(range(45)))
    Step.objects.create(run=run, order=1, key="s#1", name="Big", kind="do", status="succeeded",
                        output="x" * 50_000)  # fmt: skip
    page = owner_client.get(run.get_absolute_url()).content.decode()
    assert "Show 20 more (25 left)" in page
    assert "Load more" in page
    more = owner_client.get(
        reverse("runs:value", args=[run.pk]), {"field": "output", "view": "items", "start": 20}
    ).content.decode()
    assert "Show 20 more (5 left)" in more


def test_other_organizations_objects_are_404(client, outsider, loop):
    client.force_login(outsider)
    run = RunFactory(loop=loop)
    value_url = reverse("runs:value", args=[run.pk]) + "?field=input"
    for url in (loop.get_absolute_url(), reverse("loops:editor", args=[loop.slug]),
                run.get_absolute_url(), value_url):  # fmt: skip
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("runs:restart", args=[run.pk])).status_code == 404


def test_viewer_reads_but_cannot_deploy_or_manage_tokens(client, org, loop):
    viewer = MembershipFactory(organization=org, role=Role.VIEWER).user
    client.force_login(viewer)
    assert client.get(loop.get_absolute_url()).status_code == 200
    code = loop.active_version.code
    assert client.post(reverse("loops:editor", args=[loop.slug]), {"code": code}).status_code == 403
    assert client.get(reverse("accounts:tokens")).status_code == 403


def test_token_is_shown_once_and_can_be_revoked(owner_client, org):
    response = owner_client.post(
        reverse("accounts:tokens"), {"name": "CI", "scope": "trigger"}, follow=True
    )
    page = response.content.decode()
    assert "it will not be shown again" in page
    token = ApiToken.objects.get(name="CI")
    assert token.prefix in page
    again = owner_client.get(reverse("accounts:tokens")).content.decode()
    assert "it will not be shown again" not in again
    owner_client.post(reverse("accounts:token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.status == "revoked"


def test_members_invite_change_role_and_keep_an_owner(owner_client, org, owner):
    ana_user = UserFactory(username="ana", email="ana@example.com")
    sent = owner_client.post(reverse("accounts:members"), {"identifier": "ana@example.com",
                                                           "role": "viewer"})  # fmt: skip
    assert "Invitation sent to ana@example.com" in sent.content.decode()
    assert not Membership.objects.filter(organization=org, user=ana_user).exists()
    invitation = Invitation.objects.get(organization=org, identifier="ana@example.com")
    ana_client = Client()
    ana_client.force_login(ana_user)
    ana_client.post(reverse("accounts:invitation_accept", args=[invitation.pk]))
    ana = Membership.objects.get(organization=org, user__username="ana")
    assert ana.role == "viewer"
    owner_client.post(reverse("accounts:member_role", args=[ana.pk]), {"role": "editor"})
    ana.refresh_from_db()
    assert ana.role == "editor"
    me = Membership.objects.get(organization=org, user=owner)
    response = owner_client.post(reverse("accounts:member_remove", args=[me.pk]), follow=True)
    assert "at least one owner" in response.content.decode()
    unknown = owner_client.post(reverse("accounts:members"), {"identifier": "nobody",
                                                              "role": "viewer"})  # fmt: skip
    assert "Invitation sent to nobody" in unknown.content.decode()


def test_save_as_test_input_and_schedule_preview(owner_client, loop):
    run = RunFactory(loop=loop, input={"name": "Zed"})
    owner_client.post(reverse("runs:save_input", args=[run.pk]), {"name": "Zed case"})
    assert loop_models.TestInput.objects.get(loop=loop).input == {"name": "Zed"}
    preview = owner_client.get(
        reverse("loops:cron_preview", args=[loop.slug]), {"cron": "0 9 * * 1", "timezone": "UTC"}
    ).content.decode()
    assert preview.count("09:00 UTC") == 5
    paris = owner_client.get(
        reverse("loops:cron_preview", args=[loop.slug]),
        {"cron": "0 9 * * 1", "timezone": "Europe/Paris"},
    ).content.decode()
    assert paris.count("09:00 Europe/Paris") == 5
    bad = owner_client.get(reverse("loops:cron_preview", args=[loop.slug]), {"cron": "nope"})
    assert "not a valid cron" in bad.content.decode()


def test_org_switcher_changes_current_org(owner_client, owner, other_org, loop):
    MembershipFactory(organization=other_org, user=owner, role=Role.VIEWER)
    page = owner_client.get(reverse("loops:list")).content.decode()
    assert "Globex" in page
    owner_client.post(reverse("accounts:switch_org", args=["globex"]))
    assert owner_client.get(loop.get_absolute_url()).status_code == 404


def test_only_an_owner_grants_the_owner_role(client, org, owner):
    admin = MembershipFactory(organization=org, role=Role.ADMIN).user
    client.force_login(admin)
    mine = Membership.objects.get(organization=org, user=admin)
    url = reverse("accounts:member_role", args=[mine.pk])
    assert client.post(url, {"role": "owner"}).status_code == 403
    theirs = Membership.objects.get(organization=org, user=owner)
    assert client.post(reverse("accounts:member_remove", args=[theirs.pk])).status_code == 403
    mine.refresh_from_db()
    assert mine.role == "admin"


def test_test_run_uses_a_saved_input_and_the_draft(owner_client, loop):
    saved = loop_models.TestInput.objects.create(loop=loop, name="Zed", input={"name": "Zed"})
    draft = loop.active_version.code.replace("Hello", "Yo")
    response = owner_client.post(
        reverse("loops:test", args=[loop.slug]),
        {"code": draft, "input": "", "test_input": saved.pk},
    )
    run = Run.objects.get()
    assert response["Location"] == run.get_absolute_url()
    assert (run.mode, run.input, run.version_id) == ("test", {"name": "Zed"}, None)
    assert run.test_code == draft
    editor = owner_client.get(reverse("loops:editor", args=[loop.slug])).content.decode()
    assert ">Zed</option>" in editor


def test_runs_list_date_range(owner_client, loop):
    old = RunFactory(loop=loop, created_at=timezone.now() - timedelta(days=10))
    new = RunFactory(loop=loop)
    today = timezone.localdate()
    page = owner_client.get(
        reverse("runs:list"), {"start": (today - timedelta(days=1)).isoformat()}
    ).content.decode()
    assert new.pk in page
    assert old.pk not in page
    page = owner_client.get(
        reverse("runs:list"), {"end": (today - timedelta(days=5)).isoformat()}
    ).content.decode()
    assert old.pk in page
    assert new.pk not in page


def test_the_editors_first_test_run_of_the_demo_loop_succeeds(owner_client, loop):
    """The editor pre-fills the test input with a JSON object (not a JSON string of one), so
    the greeting loop's first test run, as a new user makes it, succeeds."""
    editor = owner_client.get(reverse("loops:editor", args=[loop.slug])).content.decode()
    prefilled = html.unescape(re.search(r'<textarea name="input"[^>]*>(.*?)</textarea>', editor,
                                        re.S).group(1))  # fmt: skip
    assert json.loads(prefilled) == {"name": "Ana"}
    owner_client.post(
        reverse("loops:test", args=[loop.slug]),
        {"code": loop.active_version.code, "input": prefilled, "test_input": ""},
    )
    run = execute(Run.objects.get())
    assert (run.status, run.input, run.output) == (
        "succeeded", {"name": "Ana"}, {"greeting": "Hello, Ana!"}
    )  # fmt: skip


@pytest.mark.parametrize(("on_reject", "then"), [("stop", "The run stops."),
                                                 ("return", "The run carries on.")])  # fmt: skip
def test_after_a_reject_the_page_says_whether_the_run_stops(owner_client, org, on_reject, then):
    run = run_program(org, f'return step.approve("Ship", "Ship?", on_reject="{on_reject}")')
    assert run.status == "waiting"
    page = owner_client.post(
        reverse("runs:respond", args=[run.pk]), {"action": "reject", "reason": "no"}, follow=True
    ).content.decode()
    assert f"Rejected. {then}" in page


def test_a_programs_error_names_its_line_once(owner_client, loop):
    broken = "class Broken(Loop):\n    def run(self, event, step):\n        return (\n"
    page = owner_client.post(
        reverse("loops:test", args=[loop.slug]),
        {"code": broken, "input": "{}", "test_input": ""},
        headers={"HX-Request": "true"},
    ).content.decode()
    line = re.search(r'<span class="tag tag-error">Line (\d+)</span> ([^<]*)</div>', page)
    assert line is not None
    assert not line.group(2).startswith("Line ")


def test_a_failed_runs_error_card_says_each_thing_once(owner_client, org):
    run = run_program(org, 'step.do("Transform", lambda: int("x"), retries=Retry(limit=0))')
    assert run.status == "failed"
    page = owner_client.get(run.get_absolute_url()).content.decode()
    card = page[page.index('class="card error-card"') :]
    card = card[: card.index("</section>")]
    assert "in step “Transform”" in card
    detail = "invalid literal for int() with base 10: &#x27;x&#x27;"
    assert f'<p class="error-text"><strong>ValueError:</strong> {detail}</p>' in card


def test_a_cancelled_waiting_run_reads_cancelled_not_failed(owner_client, org):
    run = run_program(org, 'step.wait_for_event("Wait for payment", "paid")\nreturn 1')
    assert run.status == "waiting"
    owner_client.post(reverse("runs:cancel", args=[run.pk]))
    page = owner_client.get(run.get_absolute_url()).content.decode()
    step = page[page.index('data-step="Wait for payment"') :]
    step = step[: step.index("</li>")]
    assert "badge-cancelled" in step
    assert "badge-failed" not in step
    assert "section-error" not in step
    assert 'Errors <span class="count">0</span>' in page
    listed = owner_client.get(reverse("runs:list"), {"has_errors": "on"}).content.decode()
    assert run.pk not in listed
    assert run.pk in owner_client.get(reverse("runs:list")).content.decode()


def test_overview_counts_live_runs_and_shows_percentiles_only_from_enough_of_them(
    owner_client, loop
):
    for ms in (100, 200):
        RunFactory(loop=loop, duration_ms=ms)
    RunFactory(loop=loop, status="failed", mode="test", duration_ms=5)  # a test run
    overview = owner_client.get(loop.get_absolute_url()).content.decode()
    assert "seg seg-failed" not in overview  # test runs are not in the chart
    stats = re.findall(r'<div class="stat-label">(p\d\d) duration</div><div class="stat-value"'
                       r'[^>]*>([^<]*)</div>', overview)  # fmt: skip
    assert dict(stats) == {"p50": "100 ms", "p95": "—", "p99": "—"}  # 2 runs: no p95, no p99
    for ms in range(18):
        RunFactory(loop=loop, duration_ms=1000 + ms)
    overview = owner_client.get(loop.get_absolute_url()).content.decode()
    stats = dict(re.findall(r'<div class="stat-label">(p\d\d) duration</div><div class="stat-'
                            r'value"[^>]*>([^<]*)</div>', overview))  # fmt: skip
    assert stats["p95"] == "1.0 s"
    assert stats["p99"] == "—"


def test_relative_times_show_the_absolute_time_on_hover(owner_client, loop):
    queued = RunFactory(loop=loop, status="pending")
    done = RunFactory(loop=loop, started_at=timezone.now(), completed_at=timezone.now())
    listed = owner_client.get(reverse("runs:list")).content.decode()
    row = listed[listed.index(queued.pk) :]
    row = row[: row.index("</tr>")]
    assert re.search(r'queued <time datetime="[^"]+" title="[^"]+">', row)
    page = owner_client.get(done.get_absolute_url()).content.decode()
    assert re.search(r'id="run-duration" title="Completed [^"]+"', page)


def test_a_loops_logs_page_in_pages_keeps_its_filters(owner_client, loop):
    run = RunFactory(loop=loop)
    LogEntry.objects.bulk_create(
        LogEntry(run=run, loop=loop, level="info", message=f"line {n}", time=timezone.now())
        for n in range(60)
    )
    url = reverse("loops:logs", args=[loop.slug])
    first = owner_client.get(url, {"level": "info"}).content.decode()
    assert "Page 1 of 2" in first
    assert 'href="?level=info&page=2">Older →</a>' in first
    second = owner_client.get(url, {"level": "info", "page": 2}).content.decode()
    assert 'href="?level=info&page=1">← Newer</a>' in second
    assert "Older →" not in second
