"""The approval inbox: step.ask/step.approve's assignee, remind_after and escalate_after, who may
answer, GET /api/v1/approvals and POST /api/v1/approvals/decide, the inbox page, its count in
the navigation, reminder and escalation webhook events, and the audit of every answer."""

import json
import re
import threading
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from accounts.models import AuditEvent, Role, TokenScope
from runs import tasks
from runs.clock import fire_due_timers
from runs.engine.executor import execute_run
from runs.inbox import stamp
from runs.models import Run, RunStatus, Step, Timer, TimerKind, Webhook, WebhookDelivery
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.engine_helpers import program
from tests.factories import (
    LoopFactory,
    MembershipFactory,
    RunFactory,
    UserFactory,
    make_token,
)

pytestmark = pytest.mark.django_db(transaction=True)

WAITS = program(
    """
    body = event.body
    who = {"assignee": body.get("assignee"), "remind_after": body.get("remind"),
           "escalate_after": body.get("escalate")}
    if body.get("kind") == "input":
        return step.ask("Question", body.get("prompt", "What is your name?"), **who)
    decision = step.approve("Ship", body.get("prompt", "Ship it?"), tool="deploy",
                            tool_input={"env": "prod"}, on_reject="return", **who)
    return {"decision": decision}
    """
)


@pytest.fixture
def waits(org):
    return LoopFactory(organization=org, slug="waits", name="Waits", code=WAITS)


@pytest.fixture
def admin(org):
    return MembershipFactory(
        organization=org, role=Role.ADMIN, user=UserFactory(username="ada")
    ).user


def waiting(loop, **body) -> Run:
    """A run of `loop` executed in this process until it waits for a person."""
    run = run_trigger(loop=loop, input=body, trigger_type="api_token")
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.WAITING, (run.status, run.error_message)
    return run


def error_of(response, status):
    assert response.status_code == status, response.text
    return response.json()["error"]


def age(run: Run, seconds: int) -> None:
    """Make a run's wait look `seconds` old (the list orders and filters by when it began)."""
    run.refresh_from_db()
    since = timezone.now() - timedelta(seconds=seconds)
    Run.objects.filter(pk=run.pk).update(pending={**run.pending, "since": stamp(since)})


# --- Waits for a person -------------------------------------------------------------------------


def test_assignees_and_reminder_times_are_kept_with_the_wait(waits, member):
    run = waiting(waits, assignee=["role:admin", "user:mo"], remind=60, escalate=3600)
    step = run.steps.get()
    assert step.input == {
        "prompt": "Ship it?", "tool": "deploy", "toolInput": {"env": "prod"}, "onReject": "return",
        "assignees": ["role:admin", "user:mo"], "remindAfter": 60.0, "escalateAfter": 3600.0,
    }  # fmt: skip
    assert run.pending["assignees"] == ["role:admin", "user:mo"]
    assert run.pending["stepId"] == step.pk
    assert run.pending["since"] == stamp(step.started_at)
    timer = Timer.objects.get(kind=TimerKind.APPROVAL, target=step.pk)
    assert abs(timer.due_at - (step.started_at + timedelta(seconds=60))) < timedelta(seconds=1)
    assert run.pending["overdueAt"] == stamp(timer.due_at)
    question = waiting(waits, kind="input", assignee="role:editor")
    assert question.steps.get().input == {
        "prompt": "What is your name?",
        "assignees": ["role:editor"],
    }
    assert not Timer.objects.filter(target=question.steps.get().pk).exists()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"assignee": "admin"}, "assignee: 'admin' is not \"role:<owner|admin|editor|viewer>\""),
        ({"assignee": ["role:boss"]}, "assignee: 'role:boss' names no role"),
        ({"assignee": "user:nobody"}, "assignee: no member named 'nobody' in this organization"),
        ({"assignee": 7}, "assignee must be"),
        ({"remind": -5}, "remind_after must be a number of seconds > 0"),
        ({"escalate": "soon"}, "escalate_after must be a number of seconds > 0"),
    ],
)
def test_a_bad_assignee_or_reminder_fails_the_step_naming_the_argument(waits, body, message):
    run = run_trigger(loop=waits, input=body, trigger_type="api_token")
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    step = run.steps.get()
    assert step.status == "failed"
    assert step.error["type"] == "ValueError"
    assert step.error["message"].startswith(message), step.error["message"]
    assert message in run.error_message
    assert not Timer.objects.exists()


# --- GET /api/v1/approvals ----------------------------------------------------------------------


def test_approvals_lists_every_wait_for_a_person_oldest_first(api, waits, org, member, other_org):
    first = waiting(waits, assignee="user:mo")
    second = waiting(waits, kind="input", prompt="Which region?")
    third = waiting(LoopFactory(organization=org, slug="other", code=WAITS))
    age(first, 300)
    age(second, 200)
    age(third, 100)
    RunFactory(loop=waits, status=RunStatus.SUCCEEDED)
    RunFactory(loop=waits, status=RunStatus.WAITING, pending={"kind": "event", "eventType": "go"})
    foreign = LoopFactory(organization=other_org, slug="waits", code=WAITS)
    waiting(foreign)

    body = api.get("/api/v1/approvals").json()
    assert [item["runId"] for item in body["data"]] == [first.pk, second.pk, third.pk]
    assert (body["limit"], body["offset"], body["hasMore"], body["nextCursor"]) == (
        10,
        0,
        False,
        None,
    )
    item = body["data"][0]
    first.refresh_from_db()
    assert item == {
        "runId": first.pk, "loopId": waits.pk, "loopSlug": "waits",
        "stepId": first.steps.get().pk, "kind": "approval", "prompt": "Ship it?",
        "tool": "deploy", "toolInput": {"env": "prod"}, "assignees": ["user:mo"],
        "waitingSince": item["waitingSince"], "overdue": False,
    }  # fmt: skip
    since = datetime.fromisoformat(item["waitingSince"])
    assert abs(since - (timezone.now() - timedelta(seconds=300))) < timedelta(seconds=30)
    question = body["data"][1]
    assert (question["kind"], question["prompt"], question["tool"], question["toolInput"]) == (
        "input", "Which region?", None, None,
    )  # fmt: skip
    assert question["assignees"] == []


def test_approvals_filters(api, waits, org, member):
    other = LoopFactory(organization=org, slug="other", code=WAITS)
    for_admins = waiting(waits, assignee="role:admin")
    for_mo = waiting(waits, kind="input", assignee=["user:mo", "role:owner"])
    anyone = waiting(other)
    age(for_admins, 7200)

    def ids(**params):
        response = api.get("/api/v1/approvals", params=params)
        assert response.status_code == 200, response.text
        return {item["runId"] for item in response.json()["data"]}

    assert ids() == {for_admins.pk, for_mo.pk, anyone.pk}
    assert ids(loop="other") == {anyone.pk}
    assert ids(loop=waits.pk) == {for_admins.pk, for_mo.pk}
    assert ids(kind="input") == {for_mo.pk}
    assert ids(kind="approval") == {for_admins.pk, anyone.pk}
    assert ids(assignee="role:admin") == {for_admins.pk}
    assert ids(assignee="user:mo") == {for_mo.pk}
    assert ids(assignee="user:m") == set()  # a whole assignee, not a part of one
    assert ids(assignee="role:owner") == {for_mo.pk}
    assert ids(assignee="none") == {anyone.pk}
    assert ids(olderThan=3600) == {for_admins.pk}
    assert ids(olderThan=0) == {for_admins.pk, for_mo.pk, anyone.pk}
    assert ids(kind="approval", olderThan=60, assignee="role:admin") == {for_admins.pk}

    for params, field in [
        ({"kind": "event"}, "kind"),
        ({"loop": "nope"}, "loop"),
        ({"assignee": "admins"}, "assignee"),
        ({"olderThan": -1}, "olderThan"),
        ({"limit": 101}, "limit"),
        ({"cursor": "garbage"}, "cursor"),
    ]:
        error = error_of(api.get("/api/v1/approvals", params=params), 422)
        assert error["details"][0]["field"] == field, (params, error)


def test_approvals_are_paginated_like_the_runs_list(api, waits):
    runs = [waiting(waits) for _ in range(5)]
    for n, run in enumerate(runs):
        age(run, 1000 - n)
    expected = [run.pk for run in runs]

    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = api.get("/api/v1/approvals", params=params).json()
        seen += [item["runId"] for item in body["data"]]
        assert body["limit"] == 2
        if not body["hasMore"]:
            assert body["nextCursor"] is None
            break
        cursor = body["nextCursor"]
    assert seen == expected
    page = api.get("/api/v1/approvals", params={"limit": 2, "offset": 2}).json()
    assert [item["runId"] for item in page["data"]] == expected[2:4]
    assert (page["offset"], page["hasMore"]) == (2, True)
    # A run decided meanwhile drops out; the cursor still goes on after the last item seen.
    first = api.get("/api/v1/approvals", params={"limit": 2}).json()
    api.post("/api/v1/approvals/decide", json={"runIds": [expected[2]], "action": "approve"})
    rest = api.get("/api/v1/approvals", params={"cursor": first["nextCursor"]}).json()
    assert [item["runId"] for item in rest["data"]] == expected[3:]


def test_approvals_need_a_full_token(live_server, org, anon_api):
    trigger_only = make_token(org, scope=TokenScope.TRIGGER, name="trigger only")
    headers = {"Authorization": f"Bearer {trigger_only}"}
    assert error_of(anon_api.get("/api/v1/approvals", headers=headers), 403)["code"] == "forbidden"
    response = anon_api.post("/api/v1/approvals/decide", headers=headers,
                             json={"runIds": ["run_x"], "action": "approve"})  # fmt: skip
    assert error_of(response, 403)["code"] == "forbidden"
    assert error_of(anon_api.get("/api/v1/approvals"), 401)["code"] == "unauthorized"


def test_the_approvals_endpoints_are_in_the_openapi_schema(anon_api):
    paths = anon_api.get("/api/openapi.json").json()["paths"]
    listing = paths["/api/v1/approvals"]["get"]
    assert {p["name"] for p in listing["parameters"]} >= {
        "loop", "kind", "assignee", "olderThan", "limit", "offset", "cursor",
    }  # fmt: skip
    assert "post" in paths["/api/v1/approvals/decide"]


# --- POST /api/v1/approvals/decide ----------------------------------------------------------------


def test_decide_approves_the_approvals_and_skips_the_rest(api, waits, other_org):
    one = waiting(waits, assignee="role:owner")  # a token acts for the organization
    two = waiting(waits)
    question = waiting(waits, kind="input")
    done = RunFactory(loop=waits, status=RunStatus.SUCCEEDED)
    foreign = waiting(LoopFactory(organization=other_org, slug="waits", code=WAITS))

    ids = [one.pk, two.pk, question.pk, done.pk, foreign.pk, "run_unknown", one.pk]
    response = api.post(
        "/api/v1/approvals/decide", json={"runIds": ids, "action": "approve", "reason": "Batch OK"}
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["decided"] == 2
    assert [s["runId"] for s in data["skipped"]] == [
        question.pk,
        done.pk,
        foreign.pk,
        "run_unknown",
    ]
    reasons = {s["runId"]: s["reason"] for s in data["skipped"]}
    assert reasons[question.pk] == "The run waits for an answer to a question, not for an approval."
    assert reasons[done.pk] == "The run is not waiting for an approval (it is succeeded)."
    assert reasons[foreign.pk] == reasons["run_unknown"] == "No such run."

    for run in (one, two):
        step = Step.objects.get(run=run)
        assert step.status == "succeeded"
        assert step.output == {"approved": True, "reason": "Batch OK", "by": "test token"}
        assert Run.objects.get(pk=run.pk).status == RunStatus.PENDING  # queued to carry on
    assert Run.objects.get(pk=question.pk).status == RunStatus.WAITING
    assert Run.objects.get(pk=foreign.pk).status == RunStatus.WAITING

    audited = AuditEvent.objects.filter(action="approval.approve").order_by("at")
    assert [(e.object_type, e.object_id) for e in audited] == [("run", one.pk), ("run", two.pk)]
    event = audited[0]
    assert (event.actor_type, event.actor_name, event.organization_id) == (
        "token", "test token", waits.organization_id,
    )  # fmt: skip
    assert event.details == {"stepId": one.steps.get().pk, "stepName": "Ship", "reason": "Batch OK"}
    assert event.ip == "127.0.0.1"

    again = api.post("/api/v1/approvals/decide", json={"runIds": [one.pk], "action": "reject"})
    assert again.json()["data"]["decided"] == 0


def test_reject_through_decide_hands_the_decision_to_the_program(api, waits):
    run = waiting(waits)
    body = {"runIds": [run.pk], "action": "reject", "reason": "Not today"}
    assert api.post("/api/v1/approvals/decide", json=body).json()["data"]["decided"] == 1
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == {
        "decision": {"approved": False, "reason": "Not today", "by": "test token"}
    }
    assert AuditEvent.objects.get(action="approval.reject").object_id == run.pk


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"runIds": [], "action": "approve"}, "runIds"),
        ({"runIds": ["run_1"], "action": "maybe"}, "action"),
        ({"action": "approve"}, "runIds"),
        ({"runIds": ["run_1"] * 1001, "action": "approve"}, "runIds"),
    ],
)
def test_decide_refuses_a_body_of_the_wrong_shape(api, body, field):
    error = error_of(api.post("/api/v1/approvals/decide", json=body), 422)
    assert error["details"][0]["field"] == field


def test_the_worker_carries_on_after_a_decision(worker, api, waits):
    run = run_trigger(loop=waits, input={"assignee": "role:admin"}, trigger_type="api_token")
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=60)
    listed = api.get("/api/v1/approvals").json()["data"]
    assert [(i["runId"], i["assignees"]) for i in listed] == [(run.pk, ["role:admin"])]
    body = {"runIds": [run.pk], "action": "approve", "reason": "Looks right"}
    assert api.post("/api/v1/approvals/decide", json=body).json()["data"] == {
        "decided": 1, "skipped": [],
    }  # fmt: skip
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.SUCCEEDED, timeout=60)
    run.refresh_from_db()
    assert run.output == {
        "decision": {"approved": True, "reason": "Looks right", "by": "test token"}
    }
    assert api.get("/api/v1/approvals").json()["data"] == []


# --- Who may answer ---------------------------------------------------------------------------


def test_only_assignees_and_admins_may_answer_on_the_run_page(client, waits, member, admin):
    run = waiting(waits, assignee="role:admin")
    client.force_login(member)  # an editor, not an admin
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Assigned to admins (read-only for you)" in page
    assert 'value="approve"' not in page
    response = client.post(f"/runs/{run.pk}/respond/", {"action": "approve"}, follow=True)
    assert "This approval is assigned to admins: only they or an admin may answer it." in (
        response.content.decode()
    )
    assert Step.objects.get(run=run).status == "waiting"
    assert not AuditEvent.objects.exists()

    client.force_login(admin)
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Assigned to admins" in page
    assert "read-only" not in page
    assert 'value="approve"' in page
    client.post(f"/runs/{run.pk}/respond/", {"action": "approve", "reason": "Fine"})
    step = Step.objects.get(run=run)
    assert step.status == "succeeded"
    assert step.output == {"approved": True, "reason": "Fine", "by": "ada"}
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_type, event.actor_name, event.object_id) == (
        "approval.approve", "user", "ada", run.pk,
    )  # fmt: skip


def test_a_named_assignee_may_answer_and_an_item_without_one_any_editor(client, waits, member):
    client.force_login(member)
    named = waiting(waits, kind="input", assignee=["role:owner", "user:mo"])
    client.post(f"/runs/{named.pk}/respond/", {"action": "input", "value": "Ana"})
    assert Step.objects.get(run=named).output == "Ana"
    event = AuditEvent.objects.get(action="input.answer")
    assert (event.actor_name, event.details["answer"]) == ("mo", "Ana")
    anyone = waiting(waits)
    client.post(f"/runs/{anyone.pk}/respond/", {"action": "reject", "reason": "No"})
    assert Step.objects.get(run=anyone).status == "rejected"
    assert AuditEvent.objects.get(action="approval.reject").details["reason"] == "No"


def test_an_api_token_may_answer_whoever_the_item_is_assigned_to(api, waits, owner):
    run = waiting(waits, kind="input", assignee="user:olivia")
    response = api.post(f"/api/v1/runs/{run.pk}/respond", json={"action": "input", "input": 7})
    assert response.status_code == 202, response.text
    assert Step.objects.get(run=run).output == 7
    event = AuditEvent.objects.get(action="input.answer")
    assert (event.actor_type, event.actor_name, event.details["answer"]) == (
        "token",
        "test token",
        7,
    )


# --- The inbox page ---------------------------------------------------------------------------


def test_the_inbox_page_shows_every_wait_and_read_only_rows(client, waits, member, owner):
    mine = waiting(waits, assignee="user:mo", prompt="Deploy v2 to prod?")
    for_admins = waiting(waits, assignee="role:admin")
    question = waiting(waits, kind="input", prompt="Which region?")
    client.force_login(member)
    page = client.get("/inbox/").content.decode()
    assert page.index(mine.pk) < page.index(for_admins.pk) < page.index(question.pk)
    assert "Deploy v2 to prod?" in page
    assert "Which region?" in page
    assert "&quot;env&quot;: &quot;prod&quot;" in page  # the tool input as JSON
    assert f'value="{mine.pk}" form="decide-form"' in page
    assert f'value="{for_admins.pk}" form="decide-form"' not in page  # read-only for mo
    assert "Read-only: assigned to role:admin" in page
    assert f'action="/inbox/{question.pk}/answer/"' in page
    assert "Page 1 of" not in page  # one page: no pager

    client.force_login(owner)
    page = client.get("/inbox/").content.decode()
    assert f'value="{for_admins.pk}" form="decide-form"' in page
    assert "Read-only" not in page


def test_the_inbox_page_filters(client, waits, org, member):
    other = LoopFactory(organization=org, slug="other", name="Other", code=WAITS)
    mine = waiting(waits, assignee="user:mo")
    editors = waiting(other, kind="input", assignee="role:editor")
    admins = waiting(waits, assignee="role:admin")
    old = waiting(waits)
    age(old, 7200)
    client.force_login(member)

    def shown(query: str) -> set[str]:
        page = client.get(f"/inbox/?{query}").content.decode()
        return {run.pk for run in (mine, editors, admins, old) if f"item-{run.pk}" in page}

    assert shown("") == {mine.pk, editors.pk, admins.pk, old.pk}
    assert shown("assignee=me") == {mine.pk, editors.pk}
    assert shown("assignee=none") == {old.pk}
    assert shown("assignee=role:admin") == {admins.pk}
    assert shown("kind=input") == {editors.pk}
    assert shown("loop=other") == {editors.pk}
    assert shown("age=3600") == {old.pk}
    page = client.get("/inbox/?kind=sleep").content.decode()
    assert "Some filters are not valid" in page
    empty = client.get("/inbox/?loop=other&kind=approval").content.decode()
    assert "Nothing waiting matches these filters." in empty


def test_approve_several_from_the_inbox_with_one_reason(client, waits, member):
    one, two = waiting(waits), waiting(waits, assignee="user:mo")
    for_admins = waiting(waits, assignee="role:admin")
    client.force_login(member)
    response = client.post(
        "/inbox/decide/",
        {"runs": [one.pk, two.pk, for_admins.pk], "action": "approve", "reason": "Release day",
         "query": "kind=approval"},
        follow=True,
    )  # fmt: skip
    assert response.redirect_chain[-1][0] == "/inbox/?kind=approval"
    text = response.content.decode()
    assert "Approved 2 approvals; their runs carry on." in text
    assert f"Skipped {for_admins.pk}: This approval is assigned to admins" in text
    for run in (one, two):
        assert Step.objects.get(run=run).output == {"approved": True, "reason": "Release day",
                                                    "by": "mo"}  # fmt: skip
    assert Step.objects.get(run=for_admins).status == "waiting"
    assert AuditEvent.objects.filter(action="approval.approve", actor_name="mo").count() == 2
    empty = client.post("/inbox/decide/", {"action": "reject"}, follow=True).content.decode()
    assert "Select one or more approvals first" in empty


def test_answer_a_question_from_the_inbox(client, waits, member, org):
    question = waiting(waits, kind="input")
    client.force_login(member)
    response = client.post(f"/inbox/{question.pk}/answer/", {"value": "Ana"}, follow=True)
    assert f"Answer sent to {question.pk}; the run carries on." in response.content.decode()
    assert Step.objects.get(run=question).output == "Ana"
    assert AuditEvent.objects.get(action="input.answer").actor_name == "mo"
    viewer = MembershipFactory(organization=org, role=Role.VIEWER, user=UserFactory()).user
    client.force_login(viewer)
    assert client.post(f"/inbox/{question.pk}/answer/", {"value": "x"}).status_code == 403


def test_the_navigation_counts_the_runs_waiting_for_a_person(client, waits, member):
    client.force_login(member)
    page = client.get("/loops/").content.decode()
    assert 'id="inbox-count" class="badge badge-waiting" hidden' in page
    waiting(waits)
    waiting(waits, kind="input")
    RunFactory(loop=waits, status=RunStatus.WAITING, pending={"kind": "sleep"})
    page = client.get("/loops/").content.decode()
    assert 'href="/inbox/"' in page
    assert 'title="2 waiting for a person">2</span>' in page
    badge = client.get("/inbox/count/", HTTP_HX_REQUEST="true").content.decode()
    assert badge.startswith('<span id="inbox-count"')
    assert ">2</span>" in badge
    client.logout()
    assert client.get("/inbox/count/").status_code == 204


def checkbox_of(page: str, run_id: str) -> str:
    return re.search(rf'<input type="checkbox" name="runs" value="{run_id}"[^>]*>', page)[0]


def test_the_inbox_poll_answers_204_until_something_changes(client, waits, member):
    first_run = waiting(waits)
    client.force_login(member)
    headers = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "inbox-results"}
    first = client.get("/inbox/", **headers)
    assert first.status_code == 200
    token = first.content.decode().split("since=")[1].split('"')[0]
    assert client.get(f"/inbox/?since={token}", **headers).status_code == 204
    second = waiting(waits)
    changed = client.get(f"/inbox/?since={token}&runs={second.pk}", **headers)
    assert changed.status_code == 200
    # the reader's selection is kept: the box they ticked comes back ticked
    assert checkbox_of(changed.content.decode(), second.pk).endswith(" checked>")
    assert not checkbox_of(first.content.decode(), first_run.pk).endswith(" checked>")


# --- Reminders and escalations ------------------------------------------------------------------


class Receiver:
    def __init__(self):
        self.events = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.events.append((self.headers["X-Loops-Event"], json.loads(body)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    made = Receiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


def fire_approval_timer(step: Step) -> None:
    """Fire the wait's due reminder or escalation timer through the clock. Its due time is
    moved to tomorrow and the clock told it is the day after, so that no other clock (a worker
    cluster of the test session) fires it first."""
    tomorrow = timezone.now() + timedelta(days=1)
    assert Timer.objects.filter(kind=TimerKind.APPROVAL, target=step.pk).update(due_at=tomorrow)
    assert fire_due_timers(tomorrow + timedelta(days=1)) == 1


def test_reminder_then_escalation_send_webhook_events_and_mark_the_item_overdue(
    api, waits, org, settings, receiver
):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    hook = Webhook.objects.create(organization=org, url=receiver.url, secret="s",
                                  events=["approval.reminder", "approval.escalated"])  # fmt: skip
    Webhook.objects.create(organization=org, url=receiver.url, secret="s", events=["run.failed"])
    run = waiting(waits, assignee="role:admin", remind=600, escalate=3600)
    step = run.steps.get()
    assert api.get("/api/v1/approvals").json()["data"][0]["overdue"] is False

    fire_approval_timer(step)
    reminder = WebhookDelivery.objects.get()
    assert (reminder.webhook_id, reminder.event, reminder.run_id) == (
        hook.pk, "approval.reminder", run.pk,
    )  # fmt: skip
    item = api.get("/api/v1/approvals").json()["data"][0]
    assert item["overdue"] is True
    assert reminder.payload == {"event": "approval.reminder", "data": {**item, "overdue": True}}
    # the escalation's timer is set for its own time
    timer = Timer.objects.get(kind=TimerKind.APPROVAL, target=step.pk)
    assert abs(timer.due_at - (step.started_at + timedelta(seconds=3600))) < timedelta(seconds=1)
    assert tasks.deliver_webhook(reminder.pk) == "delivered"

    fire_approval_timer(step)
    escalation = WebhookDelivery.objects.exclude(pk=reminder.pk).get()
    assert escalation.event == "approval.escalated"
    assert escalation.payload["data"]["runId"] == run.pk
    assert tasks.deliver_webhook(escalation.pk) == "delivered"
    assert [event for event, _ in receiver.events] == ["approval.reminder", "approval.escalated"]
    assert receiver.events[1][1]["data"]["assignees"] == ["role:admin"]
    assert not Timer.objects.filter(kind=TimerKind.APPROVAL).exists()  # nothing more to send
    run.refresh_from_db()
    assert (run.pending["overdue"], run.pending["escalated"]) == (True, True)


def test_an_item_is_overdue_once_its_time_has_passed(api, waits):
    run = waiting(waits, remind=3600)
    Run.objects.filter(pk=run.pk).update(
        pending={**run.pending, "overdueAt": stamp(timezone.now() - timedelta(seconds=1))}
    )
    assert api.get("/api/v1/approvals").json()["data"][0]["overdue"] is True


def test_an_escalation_alone_and_the_inbox_badge(client, waits, org, member):
    Webhook.objects.create(organization=org, url="https://example.com/h", secret="s")
    run = waiting(waits, escalate=60)
    fire_approval_timer(run.steps.get())
    sent = WebhookDelivery.objects.filter(event__startswith="approval.")  # and run.* events
    assert list(sent.values_list("event", flat=True)) == ["approval.escalated"]
    client.force_login(member)
    page = client.get("/inbox/").content.decode()
    assert ">Overdue</span>" in page
    assert ">Escalated</span>" in page


def test_a_decided_or_cancelled_wait_drops_its_timers(api, waits, org):
    Webhook.objects.create(organization=org, url="https://example.com/h", secret="s")
    decided = waiting(waits, remind=600)
    cancelled = waiting(waits, kind="input", escalate=600)
    timed_out_step = decided.steps.get()
    assert Timer.objects.filter(kind=TimerKind.APPROVAL).count() == 2
    api.post(f"/api/v1/runs/{decided.pk}/respond", json={"action": "approve"})
    api.post(f"/api/v1/runs/{cancelled.pk}/cancel")
    assert not Timer.objects.filter(kind=TimerKind.APPROVAL).exists()
    # A timer left over from before (another clock, a crash) finds the wait over and sends nothing.
    # Due tomorrow: the session's worker cluster must not fire it before the test does.
    tomorrow = timezone.now() + timedelta(days=1)
    Timer.objects.create(kind=TimerKind.APPROVAL, target=timed_out_step.pk, due_at=tomorrow)
    fire_approval_timer(timed_out_step)
    assert not WebhookDelivery.objects.filter(event__startswith="approval.").exists()


def test_webhooks_subscribe_to_the_approval_events(api):
    response = api.post(
        "/api/v1/webhooks",
        json={
            "url": "https://example.com/h",
            "events": ["approval.reminder", "approval.escalated"],
        },
    )
    assert response.status_code == 201, response.text
    assert response.json()["data"]["events"] == ["approval.reminder", "approval.escalated"]
    body = {"url": "https://example.com/h", "events": ["approval.nagged"]}
    error = error_of(api.post("/api/v1/webhooks", json=body), 422)
    assert "approval.escalated" in error["message"]


def test_completing_an_assigned_wait_is_answering_it_and_only_for_those_who_may(
    client, waits, member, admin
):
    """Patch and continue's Complete is not a way round the assignees (a review finding)."""
    run = waiting(waits, assignee="role:admin")
    step = Step.objects.get(run=run)
    output = '{"approved": true, "reason": "x", "by": "ada"}'
    client.force_login(member)  # an editor, not an admin
    response = client.post(f"/runs/{run.pk}/steps/{step.pk}/complete/", {"output": output},
                           follow=True)  # fmt: skip
    assert "only they or an admin may answer it" in response.content.decode()
    assert Step.objects.get(pk=step.pk).status == "waiting"
    assert not AuditEvent.objects.exists()
    client.force_login(admin)
    client.post(f"/runs/{run.pk}/steps/{step.pk}/complete/", {"output": output})
    assert Step.objects.get(pk=step.pk).status == "succeeded"
    assert AuditEvent.objects.get().action == "step.complete"


@pytest.mark.parametrize("kind", ["approval", "input"])
def test_cancelling_an_assigned_wait_is_no_way_round_its_assignees(
    client, waits, member, admin, kind
):
    """An editor cancels the run (its wait fails), then completes the failed step: refused
    as answering it would be (a review finding); an admin may."""
    run = waiting(waits, assignee="role:admin", kind=kind)
    step = Step.objects.get(run=run)
    output = '{"approved": true, "reason": "x", "by": "ada"}'
    client.force_login(member)  # an editor, not an admin
    client.post(f"/runs/{run.pk}/cancel/")
    assert (Run.objects.get(pk=run.pk).status, Step.objects.get(pk=step.pk).status) == (
        "cancelled", "failed")  # fmt: skip
    response = client.post(f"/runs/{run.pk}/steps/{step.pk}/complete/", {"output": output},
                           follow=True)  # fmt: skip
    assert "only they or an admin may answer it" in response.content.decode()
    assert (Run.objects.get(pk=run.pk).status, Step.objects.get(pk=step.pk).status) == (
        "cancelled", "failed")  # fmt: skip
    client.force_login(admin)
    client.post(f"/runs/{run.pk}/steps/{step.pk}/complete/", {"output": output})
    assert Step.objects.get(pk=step.pk).status == "succeeded"
    assert Run.objects.get(pk=run.pk).status == "pending"  # resumed
