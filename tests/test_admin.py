"""The Django admin: every page renders, search and filters narrow, inlines and actions work."""

import html
import re

import pytest
from django.contrib.admin.utils import quote
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import ApiToken, Membership, Organization
from accounts.services import token_authenticate, token_create
from loops.models import Loop, LoopVersion, Schedule
from loops.models import TestInput as SavedTestInput
from loops.schedules import schedule_create
from loops.services import loop_deploy
from runs.admin import LargeTablePaginator, RunRowsInline
from runs.models import (
    Batch,
    DeliveryStatus,
    LogEntry,
    Run,
    RunEvent,
    RunStatus,
    ScanRequest,
    Step,
    StepStatus,
    Webhook,
    WebhookDelivery,
)
from runs.webhooks import webhook_create
from tests.factories import LoopFactory, RunFactory, UserFactory

pytestmark = pytest.mark.django_db

CODE_V2 = """\
class HealthLoop(Loop):
    def run(self, event, step):
        return {"greeting": step.do("Build greeting v2", lambda: "Hi")}
"""


@pytest.fixture
def data(org, owner, loop):
    """One row of every model, with the greeting loop at version 2."""
    loop_deploy(loop=loop, code=CODE_V2, author=owner, note="second")
    run = RunFactory(loop=loop, status=RunStatus.FAILED, error_message="Boom in step")
    first = Step.objects.create(
        run=run,
        order=1,
        key="Fetch#1",
        name="Fetch",
        status=StepStatus.SUCCEEDED,
        input={"url": "https://example.com"},
        output={"rows": 3},
    )
    second = Step.objects.create(
        run=run,
        order=2,
        key="Check#1",
        name="Check",
        kind="scan",
        status=StepStatus.FAILED,
        error={"message": "bad value", "type": "ValueError"},
    )
    LogEntry.objects.create(run=run, loop=loop, step=first, message="fetched three rows")
    LogEntry.objects.create(run=run, loop=loop, step=second, level="error", message="bad value")
    batch = Batch.objects.create(organization=org, loop=loop, count=1)
    event = RunEvent.objects.create(run=run, type="payment.received", payload={"amount": 5})
    scan = ScanRequest.objects.create(organization=org, run=run, step=second, subject={"n": 1})
    hook = webhook_create(organization=org, url="https://hooks.example.com/loops")
    delivery = WebhookDelivery.objects.create(
        webhook=hook,
        run=run,
        event="run.failed",
        payload={"runId": run.pk},
        status=DeliveryStatus.FAILED,
        status_code=500,
        attempt=5,
    )
    token, _ = token_create(organization=org, name="ci deploys")
    return {
        Organization: org,
        Membership: Membership.objects.get(user=owner),
        ApiToken: token,
        Loop: loop,
        LoopVersion: loop.versions.get(number=2),
        Schedule: schedule_create(loop=loop, cron="0 9 * * 1", input={"name": "Monday"}),
        SavedTestInput: SavedTestInput.objects.create(loop=loop, name="Ana", input={"name": "Ana"}),
        Run: run,
        Step: first,
        LogEntry: LogEntry.objects.get(message="fetched three rows"),
        Batch: batch,
        RunEvent: event,
        ScanRequest: scan,
        Webhook: hook,
        WebhookDelivery: delivery,
    }


MODELS = [
    Organization,
    Membership,
    ApiToken,
    Loop,
    LoopVersion,
    Schedule,
    SavedTestInput,
    Run,
    Step,
    LogEntry,
    Batch,
    RunEvent,
    ScanRequest,
    Webhook,
    WebhookDelivery,
]


def admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def run_action(client, model, action: str, *objs):
    return client.post(
        admin_url(model, "changelist"),
        {"action": action, "_selected_action": [o.pk for o in objs]},
        follow=True,
    )


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_and_change_page_render_with_data(admin_client, data, model):
    obj = data[model]
    listing = admin_client.get(admin_url(model, "changelist"))
    assert listing.status_code == 200
    assert obj in listing.context["cl"].result_list
    change = admin_client.get(admin_url(model, "change", obj.pk))
    assert change.status_code == 200
    assert str(obj) in change.content.decode()


@pytest.mark.parametrize(
    "model",
    [Organization, Membership, ApiToken, Loop, Schedule, SavedTestInput, Webhook],
    ids=lambda m: m.__name__,
)
def test_add_page_renders(admin_client, data, model):
    assert admin_client.get(admin_url(model, "add")).status_code == 200


@pytest.mark.parametrize(
    "model", [LoopVersion, Run, Step, LogEntry, RunEvent, WebhookDelivery], ids=lambda m: m.__name__
)
def test_engine_written_rows_cannot_be_added(admin_client, data, model):
    assert admin_client.get(admin_url(model, "add")).status_code == 403


@pytest.mark.parametrize(
    "model", [m for m in MODELS if m is not Organization], ids=lambda m: m.__name__
)
def test_every_list_has_an_organization_column_and_filter(admin_client, data, other_org, model):
    response = admin_client.get(admin_url(model, "changelist"))
    assert "column-organization" in response.content.decode()
    assert "Acme" in response.content.decode()
    filters = [spec.title for spec in response.context["cl"].filter_specs]
    assert "organization" in filters


def test_run_list_shows_status_as_a_coloured_word(admin_client, data):
    page = admin_client.get(admin_url(Run, "changelist")).content.decode()
    assert "<strong style='color: #b91c1c'>failed</strong>" in page


def test_run_search_by_id_and_loop_slug(admin_client, data):
    run = data[Run]
    other = RunFactory(loop=LoopFactory(organization=data[Organization], slug="invoices"))
    by_id = admin_client.get(admin_url(Run, "changelist"), {"q": run.pk})
    assert list(by_id.context["cl"].result_list) == [run]
    by_slug = admin_client.get(admin_url(Run, "changelist"), {"q": "invoices"})
    assert list(by_slug.context["cl"].result_list) == [other]


def test_run_filters_by_status_and_organization(admin_client, data, other_org):
    failed = data[Run]
    succeeded = RunFactory(loop=data[Loop], status=RunStatus.SUCCEEDED)
    foreign = RunFactory(loop=LoopFactory(organization=other_org), status=RunStatus.FAILED)
    url = admin_url(Run, "changelist")
    by_status = admin_client.get(url, {"status__exact": "failed"}).context["cl"].result_list
    assert set(by_status) == {failed, foreign}
    by_org = admin_client.get(url, {"organization__id__exact": other_org.pk})
    assert list(by_org.context["cl"].result_list) == [foreign]
    assert succeeded not in by_org.context["cl"].result_list


def test_step_log_and_loop_searches(admin_client, data):
    steps = admin_client.get(admin_url(Step, "changelist"), {"q": "Check"})
    assert [s.name for s in steps.context["cl"].result_list] == ["Check"]
    logs = admin_client.get(admin_url(LogEntry, "changelist"), {"q": "three rows"})
    assert [e.message for e in logs.context["cl"].result_list] == ["fetched three rows"]
    errors = admin_client.get(admin_url(LogEntry, "changelist"), {"level__exact": "error"})
    assert [e.message for e in errors.context["cl"].result_list] == ["bad value"]
    loops = admin_client.get(admin_url(Loop, "changelist"), {"q": "greet"})
    assert list(loops.context["cl"].result_list) == [data[Loop]]
    nothing = admin_client.get(admin_url(Loop, "changelist"), {"q": "no-such-loop"})
    assert list(nothing.context["cl"].result_list) == []


def test_token_list_never_shows_the_hash(admin_client, data):
    token = data[ApiToken]
    listing = admin_client.get(admin_url(ApiToken, "changelist")).content.decode()
    change = admin_client.get(admin_url(ApiToken, "change", token.pk)).content.decode()
    for page in (listing, change):
        assert f"{token.prefix}…" in page
        assert token.token_hash not in page


def test_run_page_shows_steps_and_logs_in_order_and_pretty_json(admin_client, data):
    run = data[Run]
    page = admin_client.get(admin_url(Run, "change", run.pk)).content.decode()
    assert page.index("Fetch") < page.index("Check")
    assert "fetched three rows" in page
    assert "bad value" in page
    assert "{\n  &quot;name&quot;: &quot;Khaya&quot;\n}</pre>" in page
    assert "Boom in step" in page


def test_the_run_page_from_the_changelist_link_shows_its_steps_and_logs(admin_client, data):
    """The changelist links to the admin-quoted id ("run_5F01…"): the inlines must find the
    run's rows by the id it stands for, as staff reach the page."""
    run = data[Run]
    changelist = admin_client.get(admin_url(Run, "changelist")).content.decode()
    link = re.search(r'href="([^"]*/runs/run/[^"/]*/change/[^"]*)"', changelist).group(1)
    assert quote(run.pk) != run.pk
    assert quote(run.pk) in link
    page = admin_client.get(html.unescape(link)).content.decode()
    assert page.index("Fetch") < page.index("Check")
    assert "fetched three rows" in page


def test_step_page_pretty_prints_its_input_output_and_error(admin_client, data):
    page = admin_client.get(admin_url(Step, "change", data[Step].pk)).content.decode()
    assert "&quot;rows&quot;: 3" in page
    failed = Step.objects.get(name="Check")
    page = admin_client.get(admin_url(Step, "change", failed.pk)).content.decode()
    assert "&quot;type&quot;: &quot;ValueError&quot;" in page


def test_loop_page_lists_its_versions_read_only(admin_client, data):
    loop = data[Loop]
    response = admin_client.get(admin_url(Loop, "change", loop.pk))
    page = response.content.decode()
    assert "second" in page  # the note of version 2
    assert "factory" in page  # the note of version 1
    inline = next(
        f for f in response.context["inline_admin_formsets"] if f.opts.model is LoopVersion
    )
    assert [f.original.number for f in inline] == [2, 1]
    assert not inline.has_add_permission
    assert not inline.has_change_permission


def test_version_code_is_read_only(admin_client, data):
    version = data[LoopVersion]
    url = admin_url(LoopVersion, "change", version.pk)
    page = admin_client.get(url).content.decode()
    assert "Build greeting v2" in page
    assert "<textarea" not in page
    admin_client.post(url, {"code": "class X: pass", "number": 9})
    version.refresh_from_db()
    assert version.code == CODE_V2
    assert version.number == 2


def test_cancel_action_cancels_a_waiting_run_and_skips_an_ended_one(admin_client, data):
    waiting = RunFactory(loop=data[Loop], status=RunStatus.WAITING)
    ended = RunFactory(loop=data[Loop], status=RunStatus.SUCCEEDED)
    response = run_action(admin_client, Run, "cancel_runs", waiting, ended)
    waiting.refresh_from_db()
    ended.refresh_from_db()
    assert waiting.status == RunStatus.CANCELLED
    assert ended.status == RunStatus.SUCCEEDED
    assert messages_of(response) == [
        "Cancelled 1 run.",
        "Skipped 1: The run has already ended (succeeded).",
    ]


def test_resume_action_puts_a_failed_run_back_to_pending_on_attempt_two(admin_client, data):
    run = data[Run]
    running = RunFactory(loop=data[Loop], status=RunStatus.RUNNING)
    response = run_action(admin_client, Run, "resume_runs", run, running)
    run.refresh_from_db()
    assert run.status == RunStatus.PENDING
    assert run.attempt == 2
    assert run.error_message == ""
    assert messages_of(response)[0] == "Resumed 1 run."
    assert messages_of(response)[1].startswith("Skipped 1: Only a failed or cancelled run")


def test_restart_action_creates_a_new_run_on_the_active_version(admin_client, admin_user, data):
    run = data[Run]
    response = run_action(admin_client, Run, "restart_runs", run)
    new = Run.objects.get(restarted_from=run)
    assert new.pk != run.pk
    assert new.input == run.input
    assert new.version.number == 2
    assert new.trigger_type == "user"
    assert new.triggered_by_user == admin_user
    assert new.status == RunStatus.PENDING
    assert messages_of(response) == ["Restarted 1 run."]


def test_restart_action_skips_runs_of_a_paused_loop(admin_client, data):
    Loop.objects.filter(pk=data[Loop].pk).update(paused=True)
    response = run_action(admin_client, Run, "restart_runs", data[Run])
    assert not Run.objects.filter(restarted_from=data[Run]).exists()
    assert messages_of(response) == ["Restarted 0 runs.", "Skipped 1: Loop 'greeting' is paused"]


def test_rollback_action_makes_the_previous_version_active(admin_client, data):
    loop = data[Loop]
    never_deployed = LoopFactory(organization=loop.organization, code=False)
    response = run_action(admin_client, Loop, "rollback_to_previous", loop, never_deployed)
    loop.refresh_from_db()
    assert loop.active_version.number == 1
    assert LoopVersion.objects.filter(loop=loop).count() == 2  # history is kept
    assert messages_of(response) == [
        "Rolled back 1 loop.",
        "Skipped 1: no earlier version to roll back to",
    ]


def test_pause_and_unpause_actions(admin_client, data):
    loop = data[Loop]
    response = run_action(admin_client, Loop, "pause_loops", loop)
    loop.refresh_from_db()
    assert loop.paused
    assert messages_of(response) == ["Paused 1 loop."]
    run_action(admin_client, Loop, "unpause_loops", loop)
    loop.refresh_from_db()
    assert not loop.paused


def test_revoke_action_revokes_tokens(admin_client, data):
    token = data[ApiToken]
    raw_token, raw = token_create(organization=data[Organization], name="second")
    ApiToken.objects.filter(pk=raw_token.pk).update(revoked_at=timezone.now())
    response = run_action(admin_client, ApiToken, "revoke_tokens", token, raw_token)
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert token.status == "revoked"
    assert messages_of(response) == ["Revoked 1 API token.", "Skipped 1: already revoked"]
    assert token_authenticate(raw) is None


def test_redeliver_action_queues_the_delivery_again(admin_client, data):
    delivery = data[WebhookDelivery]
    response = run_action(admin_client, WebhookDelivery, "redeliver", delivery)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.PENDING
    assert messages_of(response) == ["Queued for redelivery 1 webhook delivery."]


def test_creating_a_token_shows_its_secret_once_and_stores_only_the_hash(
    admin_client, admin_user, org
):
    response = admin_client.post(
        admin_url(ApiToken, "add"),
        {
            "organization": org.pk,
            "name": "deploy bot",
            "scope": "trigger",
            "expires_at_0": "",
            "expires_at_1": "",
        },
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    secret = re.search(r"lp_[A-Za-z0-9_-]{40,}", page).group(0)
    token = ApiToken.objects.get(name="deploy bot")
    assert token.token_hash == ApiToken.hash(secret)
    assert token.prefix == secret[:10]
    assert token.scope == "trigger"
    assert token.created_by == admin_user
    assert token_authenticate(secret) == token
    stored = [str(v) for v in ApiToken.objects.filter(pk=token.pk).values().get().values()]
    assert secret not in stored
    again = admin_client.get(admin_url(ApiToken, "change", token.pk)).content.decode()
    assert secret not in again
    assert f"{token.prefix}…" in again


def test_creating_a_loop_in_the_admin_needs_no_code(admin_client, org):
    response = admin_client.post(
        admin_url(Loop, "add"),
        {
            "organization": org.pk,
            "slug": "invoices",
            "name": "Invoices",
            "description": "",
            **inline_management("versions", 0),
            **inline_management("schedules", 0),
        },
        follow=True,
    )
    assert response.status_code == 200
    loop = Loop.objects.get(slug="invoices")
    assert loop.organization == org
    assert loop.active_version is None
    assert "not deployed" in admin_client.get(admin_url(Loop, "changelist")).content.decode()


def test_loop_with_a_bad_or_taken_slug_is_refused(admin_client, data):
    url = admin_url(Loop, "add")
    org = data[Organization]
    bad = admin_client.post(url, {"organization": org.pk, "slug": "Bad_Slug", "name": "X"})
    assert "Use lower-case letters, digits and hyphens." in bad.content.decode()
    taken = admin_client.post(url, {"organization": org.pk, "slug": "greeting", "name": "X"})
    assert taken.status_code == 200
    assert taken.context["adminform"].form.errors
    assert Loop.objects.count() == 1


def test_editing_a_loop_pauses_it_through_the_service(admin_client, data):
    loop = data[Loop]
    before = loop.updated_at
    response = admin_client.post(
        admin_url(Loop, "change", loop.pk),
        {
            "name": "Greeting 2",
            "description": "hi",
            "paused": "on",
            **inline_management("versions", 2),
            **inline_management("schedules", 1),
        },
        follow=True,
    )
    assert response.status_code == 200
    loop.refresh_from_db()
    assert (loop.name, loop.paused) == ("Greeting 2", True)
    assert loop.updated_at > before
    assert loop.slug == "greeting"


def inline_management(prefix: str, initial: int) -> dict:
    return {
        f"{prefix}-TOTAL_FORMS": initial,
        f"{prefix}-INITIAL_FORMS": initial,
        f"{prefix}-MIN_NUM_FORMS": 0,
        f"{prefix}-MAX_NUM_FORMS": 1000,
    }


def test_schedule_added_in_admin_gets_its_next_run_time(admin_client, data):
    url = admin_url(Schedule, "add")
    loop = data[Loop]
    bad = admin_client.post(
        url,
        {"loop": loop.pk, "cron": "every day", "timezone": "UTC", "input": "{}", "enabled": "on"},
    )
    assert "is not a valid cron expression" in bad.content.decode()
    admin_client.post(
        url,
        {
            "loop": loop.pk,
            "cron": "30 6 * * *",
            "timezone": "Africa/Johannesburg",
            "input": '{"name": "Zanele"}',
            "enabled": "on",
        },
    )
    schedule = Schedule.objects.get(cron="30 6 * * *")
    assert schedule.input == {"name": "Zanele"}
    assert schedule.next_run_at is not None
    assert schedule.next_run_at.minute == 30


def test_a_schedule_over_the_organizations_limit_is_refused_in_admin(admin_client, data, settings):
    loop = data[Loop]
    settings.LOOPS_MAX_SCHEDULES_PER_ORG = Schedule.objects.filter(
        loop__organization=loop.organization
    ).count()
    fields = {"loop": loop.pk, "cron": "0 7 * * *", "timezone": "UTC", "input": "{}"}
    response = admin_client.post(admin_url(Schedule, "add"), fields)
    assert response.status_code == 200  # the form again, with the reason
    assert "the most it may have" in response.content.decode()
    assert not Schedule.objects.filter(cron="0 7 * * *").exists()


def test_webhook_added_in_admin_gets_a_secret_that_is_not_shown(admin_client, org):
    admin_client.post(
        admin_url(Webhook, "add"),
        {
            "organization": org.pk,
            "url": "https://example.com/hook",
            "events": '["run.failed"]',
            "active": "on",
        },
    )
    hook = Webhook.objects.get()
    assert hook.secret.startswith("whsec_")
    assert hook.events == ["run.failed"]
    page = admin_client.get(admin_url(Webhook, "change", hook.pk)).content.decode()
    assert hook.secret not in page


def add_rows(org) -> None:
    """A second, unrelated row of every model, for the query-count test."""
    other = Organization.objects.create(slug="initech", name="Initech")
    user = UserFactory(username="pat")
    Membership.objects.create(user=user, organization=org)
    Membership.objects.create(user=user, organization=other)
    token_create(organization=other, name="other")
    loop = LoopFactory(organization=other, slug="payroll")
    schedule_create(loop=loop, cron="0 * * * *")
    SavedTestInput.objects.create(loop=loop, name="Bo", input={})
    run = RunFactory(loop=loop, batch=Batch.objects.create(organization=other, loop=loop))
    step = Step.objects.create(run=run, order=1, key="A#1", name="A", status="waiting")
    LogEntry.objects.create(run=run, loop=loop, step=step, message="another")
    RunEvent.objects.create(run=run, type="ping")
    ScanRequest.objects.create(organization=other, run=run, step=step)
    hook = webhook_create(organization=other, url="https://example.org/hook", loop=loop)
    WebhookDelivery.objects.create(webhook=hook, run=run, event="run.succeeded", payload={})


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_changelist_queries_do_not_grow_with_rows(admin_client, data, model):
    url = admin_url(model, "changelist")
    with CaptureQueriesContext(connection) as before:
        admin_client.get(url)
    add_rows(data[Organization])
    with CaptureQueriesContext(connection) as after:
        response = admin_client.get(url)
    assert len(response.context["cl"].result_list) >= 2
    assert len(after) == len(before), [q["sql"] for q in after]


def test_organization_list_counts_members_and_loops(admin_client, data, member):
    LoopFactory(organization=data[Organization], slug="invoices", code=False)
    response = admin_client.get(admin_url(Organization, "changelist"))
    org = next(o for o in response.context["cl"].result_list if o.slug == "acme")
    assert (org.n_members, org.n_loops) == (2, 2)


def test_run_page_has_no_save_button_and_a_post_changes_nothing(admin_client, data):
    run = data[Run]
    url = admin_url(Run, "change", run.pk)
    page = admin_client.get(url).content.decode()
    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    # A worker moves the run on while the page is open; posting the page must not undo it.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, attempt=2)
    admin_client.post(url, {"status": "failed", "attempt": 1})
    run.refresh_from_db()
    assert (run.status, run.attempt) == (RunStatus.RUNNING, 2)


def test_renaming_a_token_keeps_its_revocation_and_hash(admin_client, data):
    token = data[ApiToken]
    token.revoke()
    response = admin_client.post(
        admin_url(ApiToken, "change", token.pk),
        {"name": "renamed", "expires_at_0": "", "expires_at_1": ""},
    )
    assert response.status_code == 302
    stored = ApiToken.objects.get(pk=token.pk)
    assert stored.name == "renamed"
    assert stored.revoked_at == token.revoked_at
    assert stored.token_hash == token.token_hash


def test_versions_cannot_be_deleted_in_the_admin(admin_client, data):
    version = data[LoopVersion]
    assert admin_client.get(admin_url(LoopVersion, "delete", version.pk)).status_code == 403
    assert LoopVersion.objects.filter(pk=version.pk).exists()


def test_big_lists_count_from_the_planner_estimate_on_postgresql(admin_client, data, monkeypatch):
    monkeypatch.setattr(LargeTablePaginator, "estimate_above", 0)
    url = admin_url(Run, "changelist")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Run._meta.db_table}")  # the estimate is now 1 run
    RunFactory.create_batch(2, loop=data[Loop], status=RunStatus.SUCCEEDED)
    unfiltered = admin_client.get(url).context["cl"]
    assert unfiltered.result_count == (1 if connection.vendor == "postgresql" else 3)
    assert len(unfiltered.result_list) == 3
    filtered = admin_client.get(url, {"status__exact": "succeeded"}).context["cl"]
    assert filtered.result_count == 2  # a filtered list is always counted exactly


def test_a_long_run_shows_its_first_rows_and_links_to_all(admin_client, data, monkeypatch):
    monkeypatch.setattr(RunRowsInline, "max_rows", 2)
    run = data[Run]
    step = Step.objects.create(run=run, order=3, key="Late#1", name="Late", status="succeeded")
    LogEntry.objects.create(run=run, loop=run.loop, step=step, message="third line")
    response = admin_client.get(admin_url(Run, "change", run.pk))
    page = response.content.decode()
    inlines = {
        f.opts.model: [form.original for form in f]
        for f in response.context["inline_admin_formsets"]
    }
    assert [s.name for s in inlines[Step]] == ["Fetch", "Check"]
    assert [e.message for e in inlines[LogEntry]] == ["fetched three rows", "bad value"]
    assert "third line" not in page
    assert "(the first 2 of each are shown below)" in page
    all_logs = f"{admin_url(LogEntry, 'changelist')}?q={run.pk}"
    assert f'<a href="{all_logs}">3 log lines</a>' in page
    listed = admin_client.get(all_logs).context["cl"].result_list
    assert [e.message for e in listed] == ["fetched three rows", "bad value", "third line"]


def test_run_and_step_lists_never_load_large_values(admin_client, data):
    run = Run.objects.first()
    Run.objects.filter(pk=run.pk).update(input={"big": "i" * 100_000}, output="o" * 100_000)
    Step.objects.create(
        id="step_big", run=run, key="Big", name="Big", kind="do", order=99, output="s" * 100_000
    )
    for model in (Run, Step):
        with CaptureQueriesContext(connection) as queries:
            page = admin_client.get(admin_url(model, "changelist"))
        assert page.status_code == 200
        loaded = " ".join(q["sql"] for q in queries)
        for column in ('"input"', '"output"', '"code"', '"test_code"', '"error_traceback"'):
            assert f"{column}," not in loaded, (model, column)
            assert f"{column} FROM" not in loaded, (model, column)
    change = admin_client.get(admin_url(Run, "change", run.pk))
    assert "o" * 1000 in change.content.decode()  # the run itself still shows its output
