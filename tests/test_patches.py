"""Patch and continue (issue 13, item 4): retry from a step, complete a step with an output,
fire a sleeping step now, send the awaited event. Through the API over real HTTP, the pages,
and the real worker: the run resumes and ends with the patched value, and the steps before
the patch are not run again (their functions draw random numbers, which would change)."""

import pytest
from django.urls import reverse

from accounts.models import AuditEvent, Role, TokenScope
from runs.models import Run, RunStatus, Step, StepStatus, Timer
from runs.services import run_trigger
from tests.conftest import wait_until
from tests.engine_helpers import program
from tests.factories import LoopFactory, MembershipFactory, RunFactory, UserFactory, make_token

pytestmark = pytest.mark.django_db(transaction=True)

# Attempt 1 fails at "Check"; any later attempt (a resume) passes it. "Draw" and "Second" give
# a different number each time they really run.
CHECKED = program(
    """
    drawn = step.do("Draw", lambda: random.random())
    second = step.do("Second", lambda: random.random())
    checked = step.do("Check", lambda: 10 // (event.attempt - 1), retries=0)
    return {"drawn": drawn, "second": second, "checked": checked}
    """,
    imports="import random",
)

# A failure the program catches, then a failure that ends the run (on attempt 1 only).
CAUGHT = program(
    """
    drawn = step.do("Draw", lambda: random.random())
    try:
        value = step.do("Lookup", lambda: {}["missing"], retries=0)
    except KeyError:
        value = step.do("Fallback", lambda: "fallback")
    used = step.do("Use", lambda: value if event.attempt > 1 else 1 // 0, retries=0)
    return {"drawn": drawn, "used": used}
    """,
    imports="import random",
)

WAITS = program(
    """
    drawn = step.do("Draw", lambda: random.random())
    kind = event.body["kind"]
    if kind == "sleep":
        step.sleep("Nap", 3600)
        got = "awake"
    elif kind == "retry":
        got = step.do("Flaky", lambda: step.attempt if step.attempt > 1 else 1 // 0,
                      retries=Retry(limit=1, delay=3600, max_delay=3600))
    elif kind == "event":
        got = step.wait_for_event("Go", "go")
    elif kind == "approval":
        got = step.approve("Ship", "Ship it?")
    else:
        got = step.ask("Name", "What is your name?")
    return {"drawn": drawn, "got": got}
    """,
    imports="import random",
)

PARENT = program(
    """
    first = step.do("Draw", lambda: random.random())
    child = step.run_loop("Child", "kid", {"n": 1})
    step.do("Check", lambda: 10 // (event.attempt - 1), retries=0)
    return {"first": first, "child": child}
    """,
    imports="import random",
)
KID = program(
    """
    if event.body.get("slow"):
        step.sleep("Long", 3600)
    return step.do("Kid draw", lambda: random.random())
    """,
    imports="import random",
)
SLOW_PARENT = program(
    """
    return step.run_loop("Child", "kid", {"slow": True})
    """
)


def start(loop, body=None) -> Run:
    return run_trigger(loop=loop, input=body or {}, trigger_type="api_token")


def ended(run: Run, timeout: float = 60) -> Run:
    wait_until(lambda: Run.objects.get(pk=run.pk).status in ("succeeded", "failed", "cancelled"),
               timeout=timeout)  # fmt: skip
    run.refresh_from_db()
    return run


def waiting(run: Run) -> Run:
    wait_until(lambda: Run.objects.get(pk=run.pk).status == RunStatus.WAITING, timeout=60)
    run.refresh_from_db()
    return run


def step_of(run: Run, name: str) -> Step:
    return Step.objects.get(run=run, name=name)


def outputs(run: Run) -> dict:
    return dict(Step.objects.filter(run=run).values_list("name", "output"))


def audits(action: str | None = None):
    events = AuditEvent.objects.order_by("at", "id")
    return list(events.filter(action=action) if action else events)


def error_code(response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["code"]


@pytest.fixture
def checked(org):
    return LoopFactory(organization=org, slug="checked", code=CHECKED)


@pytest.fixture
def waits(org):
    return LoopFactory(organization=org, slug="waits", code=WAITS)


@pytest.fixture
def failed_run(worker, checked):
    run = ended(start(checked))
    assert run.status == RunStatus.FAILED
    assert run.error_step == "Check"
    return run


# --- Retry from a step ---------------------------------------------------------------------------


def test_retry_from_reruns_that_step_and_the_later_ones_only(failed_run, api):
    before = outputs(failed_run)
    second = step_of(failed_run, "Second")
    response = api.post(f"/api/v1/runs/{failed_run.pk}/retry-from", json={"stepId": second.pk})
    assert response.status_code == 202, response.text
    data = response.json()["data"]
    assert data["id"] == failed_run.pk
    assert data["attempt"] == 2
    assert data["status"] in ("pending", "running", "succeeded")
    run = ended(failed_run)
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    # "Draw" (before the retry point) replayed its saved number; "Second" really ran again.
    assert run.output["drawn"] == before["Draw"]
    assert run.output["second"] != before["Second"]
    assert run.output["checked"] == 10
    assert not Step.objects.filter(pk=second.pk).exists()  # its checkpoint was dropped
    assert step_of(run, "Draw").pk
    assert step_of(run, "Second").run_attempt == 2
    [entry] = audits("run.retry_from")
    assert (entry.object_type, entry.object_id, entry.actor_type) == ("run", run.pk, "token")
    assert entry.details["stepName"] == "Second"
    assert entry.details["droppedSteps"] == 2  # Second and Check
    assert entry.details["statusBefore"] == "failed"
    assert entry.ip == "127.0.0.1"


def test_retry_from_the_first_step_reruns_everything(failed_run, api):
    before = outputs(failed_run)
    draw = step_of(failed_run, "Draw")
    assert api.post(f"/api/v1/runs/{failed_run.pk}/retry-from",
                    json={"stepId": draw.pk}).status_code == 202  # fmt: skip
    run = ended(failed_run)
    assert run.status == RunStatus.SUCCEEDED
    assert run.output["drawn"] != before["Draw"]


def test_retry_from_a_cancelled_run(worker, api, waits):
    run = waiting(start(waits, {"kind": "input"}))
    drawn = step_of(run, "Draw").output
    assert api.post(f"/api/v1/runs/{run.pk}/cancel").status_code == 202
    name = step_of(run, "Name")
    response = api.post(f"/api/v1/runs/{run.pk}/retry-from", json={"stepId": name.pk})
    assert response.status_code == 202, response.text
    run = waiting(run)  # it asks again: the old question was dropped
    assert step_of(run, "Name").status == StepStatus.WAITING
    assert step_of(run, "Name").pk != name.pk  # a new step, not the cancelled one again
    assert step_of(run, "Draw").output == drawn
    assert run.attempt == 2


def test_retry_from_keeps_child_runs_of_dropped_steps_detached(worker, api, org):
    LoopFactory(organization=org, slug="kid", code=KID)
    parent = LoopFactory(organization=org, slug="parent", code=PARENT)
    run = ended(start(parent))
    assert run.status == RunStatus.FAILED
    child_step = step_of(run, "Child")
    [old_child] = Run.objects.filter(parent_step=child_step)
    assert old_child.status == RunStatus.SUCCEEDED
    response = api.post(f"/api/v1/runs/{run.pk}/retry-from", json={"stepId": child_step.pk})
    assert response.status_code == 202, response.text
    run = ended(run)
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    old_child.refresh_from_db()  # kept, with its own history, no longer under a step
    assert old_child.parent_step_id is None
    assert old_child.status == RunStatus.SUCCEEDED
    [new_child] = Run.objects.filter(parent_step=step_of(run, "Child"))
    assert new_child.pk != old_child.pk
    assert run.output["child"] == new_child.output != old_child.output


def test_retry_from_refuses_a_run_that_has_not_failed(worker, api, waits, loop):
    run = waiting(start(waits, {"kind": "input"}))
    response = api.post(f"/api/v1/runs/{run.pk}/retry-from",
                        json={"stepId": step_of(run, "Draw").pk})  # fmt: skip
    assert error_code(response, 409) == "not_retryable"
    assert "waiting" in response.json()["error"]["message"]
    done = RunFactory(loop=loop, status=RunStatus.SUCCEEDED)
    step = Step.objects.create(run=done, order=0, key="A", name="A", status="succeeded")
    response = api.post(f"/api/v1/runs/{done.pk}/retry-from", json={"stepId": step.pk})
    assert error_code(response, 409) == "not_retryable"
    assert Step.objects.filter(pk=step.pk).exists()
    assert audits() == []  # a refused action is not recorded
    assert error_code(api.post(f"/api/v1/runs/{done.pk}/retry-from", json={}), 422)


# --- Complete a step with an output ------------------------------------------------------------


def test_complete_a_failed_step_resumes_with_that_output(failed_run, api):
    before = outputs(failed_run)
    check = step_of(failed_run, "Check")
    response = api.post(f"/api/v1/runs/{failed_run.pk}/steps/{check.pk}/complete",
                        json={"output": {"patched": [1, 2]}})  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.json()["data"]["attempt"] == 2
    run = ended(failed_run)
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    # Nothing ran again: both numbers are the ones saved, Check returned what was given.
    assert run.output == {"drawn": before["Draw"], "second": before["Second"],
                          "checked": {"patched": [1, 2]}}  # fmt: skip
    check.refresh_from_db()
    assert (check.status, check.error) == ("succeeded", None)
    [entry] = audits("step.complete")
    assert (entry.object_type, entry.object_id) == ("step", check.pk)
    assert entry.details["output"] == {"patched": [1, 2]}
    assert entry.details["before"]["status"] == "failed"
    assert entry.details["runId"] == run.pk


def test_completing_a_caught_failure_drops_the_steps_that_followed_it(worker, api, org):
    loop = LoopFactory(organization=org, slug="caught", code=CAUGHT)
    run = ended(start(loop))
    assert run.status == RunStatus.FAILED
    assert run.error_step == "Use"
    drawn = step_of(run, "Draw").output
    lookup = step_of(run, "Lookup")
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{lookup.pk}/complete",
                        json={"output": "patched"})  # fmt: skip
    assert response.status_code == 202, response.text
    run = ended(run)
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    assert run.output == {"drawn": drawn, "used": "patched"}
    # The except branch is not taken any more: its step went with the failure.
    assert not Step.objects.filter(run=run, name="Fallback").exists()
    assert audits("step.complete")[0].details["droppedSteps"] == 2  # Fallback and Use


@pytest.mark.parametrize(
    ("kind", "step_name", "output"),
    [("input", "Name", "Ana"), ("event", "Go", {"x": 1}),
     ("approval", "Ship", {"approved": True, "reason": "by hand"}), ("sleep", "Nap", None)],
)  # fmt: skip
def test_complete_a_waiting_step_as_if_it_had_returned(worker, api, waits, kind, step_name,
                                                       output):  # fmt: skip
    run = waiting(start(waits, {"kind": kind}))
    drawn = step_of(run, "Draw").output
    step = step_of(run, step_name)
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{step.pk}/complete", json={"output": output})
    assert response.status_code == 202, response.text
    run = ended(run)
    assert run.status == RunStatus.SUCCEEDED, run.error_message
    assert run.output == {"drawn": drawn, "got": "awake" if kind == "sleep" else output}
    assert run.attempt == 1  # an answer, not a resume
    assert not Timer.objects.filter(target=step.pk).exists()


def test_completing_a_step_waiting_for_a_child_run_cancels_the_child(worker, api, org):
    LoopFactory(organization=org, slug="kid", code=KID)
    parent = LoopFactory(organization=org, slug="parent", code=SLOW_PARENT)
    run = waiting(start(parent))
    child = wait_until(lambda: Run.objects.filter(parent_step__run=run, status="waiting").first())
    step = step_of(run, "Child")
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{step.pk}/complete",
                        json={"output": "by hand"})  # fmt: skip
    assert response.status_code == 202, response.text
    run = ended(run)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "by hand")
    child.refresh_from_db()
    assert child.status == RunStatus.CANCELLED
    assert audits("step.complete")[0].details["cancelledRuns"] == [child.pk]


def test_complete_refuses_steps_and_runs_in_other_states(worker, api, waits, loop, org):
    run = waiting(start(waits, {"kind": "input"}))
    draw = step_of(run, "Draw")  # succeeded
    url = f"/api/v1/runs/{run.pk}/steps/{draw.pk}/complete"
    response = api.post(url, json={"output": 1})
    assert error_code(response, 409) == "not_completable"
    assert "succeeded" in response.json()["error"]["message"]
    # A failed step of a run that has not failed (it caught the failure and waits now).
    caught = Step.objects.create(run=run, order=99, key="X", name="X", status="failed",
                                 error={"message": "boom", "type": "ValueError"})  # fmt: skip
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{caught.pk}/complete", json={"output": 1})
    assert error_code(response, 409) == "not_completable"
    assert "the run is waiting" in response.json()["error"]["message"]
    # A step.each is never completed: its steps run again on replay.
    done = RunFactory(loop=loop, status=RunStatus.FAILED)
    each = Step.objects.create(run=done, order=0, key="E", name="E", kind="each", status="failed")
    response = api.post(f"/api/v1/runs/{done.pk}/steps/{each.pk}/complete", json={"output": 1})
    assert error_code(response, 409) == "not_completable"
    # The body: output is required (null is a value), and checked as any input.
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{step_of(run, 'Name').pk}/complete",
                        json={})  # fmt: skip
    assert error_code(response, 422) == "validation_error"
    big = {"text": "x" * (1024 * 1024 + 1)}
    name_url = f"/api/v1/runs/{run.pk}/steps/{step_of(run, 'Name').pk}/complete"
    assert error_code(api.post(name_url, json={"output": big}), 413) == "input_too_large"
    assert Run.objects.get(pk=run.pk).status == RunStatus.WAITING
    assert audits() == []


# --- Fire a timer now ----------------------------------------------------------------------------


def test_fire_wakes_a_sleeping_step_now(worker, api, waits):
    run = waiting(start(waits, {"kind": "sleep"}))
    nap = step_of(run, "Nap")
    assert Timer.objects.filter(target=nap.pk).exists()
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{nap.pk}/fire")
    assert response.status_code == 202, response.text
    assert response.json()["data"]["id"] == run.pk
    run = ended(run, timeout=30)  # not an hour
    assert run.status == RunStatus.SUCCEEDED
    assert run.output["got"] == "awake"
    assert not Timer.objects.filter(target=nap.pk).exists()
    [entry] = audits("step.fire")
    assert (entry.object_type, entry.object_id, entry.details["stepName"]) == (
        "step",
        nap.pk,
        "Nap",
    )
    assert entry.details["dueAt"]


def test_fire_tries_a_step_waiting_for_its_retry_now(worker, api, waits):
    run = waiting(start(waits, {"kind": "retry"}))
    flaky = step_of(run, "Flaky")
    assert (flaky.status, flaky.attempts) == (StepStatus.WAITING, 1)
    assert api.post(f"/api/v1/runs/{run.pk}/steps/{flaky.pk}/fire").status_code == 202
    run = ended(run, timeout=30)
    assert (run.status, run.output["got"]) == (RunStatus.SUCCEEDED, 2)  # its second attempt
    assert not Timer.objects.filter(target=flaky.pk).exists()


def test_fire_refuses_a_step_that_does_not_sleep(worker, api, waits):
    run = waiting(start(waits, {"kind": "event"}))
    go = step_of(run, "Go")
    response = api.post(f"/api/v1/runs/{run.pk}/steps/{go.pk}/fire")
    assert error_code(response, 409) == "not_sleeping"
    assert "“Go” (event) waits for something else" in response.json()["error"]["message"]
    draw = step_of(run, "Draw")
    assert error_code(api.post(f"/api/v1/runs/{run.pk}/steps/{draw.pk}/fire"), 409)
    assert Run.objects.get(pk=run.pk).status == RunStatus.WAITING
    assert audits() == []


# --- Send the awaited event ----------------------------------------------------------------------


def test_sending_an_event_is_audited(worker, api, waits):
    run = waiting(start(waits, {"kind": "event"}))
    response = api.post(f"/api/v1/runs/{run.pk}/events", json={"type": "go", "payload": [1]})
    assert response.status_code == 202
    assert response.json()["data"]["consumed"] is True
    assert ended(run).output["got"] == [1]
    [entry] = audits("run.event")
    assert (entry.object_type, entry.object_id) == ("run", run.pk)
    assert entry.details == {"eventId": response.json()["data"]["id"], "type": "go",
                             "payload": [1], "consumed": True}  # fmt: skip
    response = api.post(f"/api/v1/runs/{run.pk}/events", json={"type": "go"})
    assert error_code(response, 409) == "run_ended"
    assert len(audits("run.event")) == 1


# --- Who may: scopes, organizations ------------------------------------------------------------


def test_trigger_tokens_get_403_and_other_organizations_404(live_server, api, loop, org,
                                                           other_org):  # fmt: skip
    run = RunFactory(loop=loop, status=RunStatus.FAILED)
    step = Step.objects.create(run=run, order=0, key="A", name="A", status="failed")
    calls = [
        ("retry-from", {"stepId": step.pk}),
        (f"steps/{step.pk}/complete", {"output": 1}),
        (f"steps/{step.pk}/fire", None),
    ]
    trigger = make_token(org, scope=TokenScope.TRIGGER, name="trigger only")
    outsider = make_token(other_org, name="globex")
    for path, body in calls:
        url = f"{live_server.url}/api/v1/runs/{run.pk}/{path}"
        headers = {"Authorization": f"Bearer {trigger}"}
        assert error_code(api.post(url, json=body, headers=headers), 403) == "forbidden"
        headers = {"Authorization": f"Bearer {outsider}"}
        assert error_code(api.post(url, json=body, headers=headers), 404) == "not_found"
    # A step of another run of the same organization is no step of this one.
    other = RunFactory(loop=loop, status=RunStatus.FAILED)
    url = f"/api/v1/runs/{other.pk}/retry-from"
    assert error_code(api.post(url, json={"stepId": step.pk}), 404) == "not_found"
    url = f"/api/v1/runs/{other.pk}/steps/{step.pk}/complete"
    assert error_code(api.post(url, json={"output": 1}), 404) == "not_found"
    assert Step.objects.get(pk=step.pk).status == "failed"
    assert audits() == []


def test_the_endpoints_are_documented(anon_api):
    paths = anon_api.get("/api/openapi.json").json()["paths"]
    for path in ("/api/v1/runs/{run_id}/retry-from",
                 "/api/v1/runs/{run_id}/steps/{step_id}/complete",
                 "/api/v1/runs/{run_id}/steps/{step_id}/fire"):  # fmt: skip
        operation = paths[path]["post"]
        assert operation["summary"]
        assert {"202", "403", "404", "409"} <= set(operation["responses"])


# --- The pages -----------------------------------------------------------------------------------


@pytest.fixture
def viewer(org):
    return MembershipFactory(organization=org, role=Role.VIEWER,
                             user=UserFactory(username="vic")).user  # fmt: skip


def test_pages_complete_a_failed_step_and_the_run_carries_on(failed_run, client, member):
    client.force_login(member)
    check = step_of(failed_run, "Check")
    page = client.get(failed_run.get_absolute_url()).content.decode()
    assert "Retry from here" in page
    assert "Complete with output" in page
    url = reverse("runs:complete", args=[failed_run.pk, check.pk])
    response = client.post(url, {"output": "not json"}, follow=True)
    assert "was not completed: " in response.content.decode()
    assert Run.objects.get(pk=failed_run.pk).status == RunStatus.FAILED
    response = client.post(url, {"output": '{"by": "hand"}'})
    assert response.status_code == 302
    run = ended(failed_run)
    assert run.output["checked"] == {"by": "hand"}
    [entry] = audits("step.complete")
    assert (entry.actor_type, entry.actor_name) == ("user", "mo")


def test_pages_answer_htmx_with_the_form_and_its_error(failed_run, client, member):
    client.force_login(member)
    check = step_of(failed_run, "Check")
    url = reverse("runs:complete", args=[failed_run.pk, check.pk])
    response = client.post(url, {"output": "{oops"}, headers={"HX-Request": "true"})
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith("<form")
    assert "{oops</textarea>" in html
    assert 'role="alert"' in html
    assert "not valid JSON" in html
    response = client.post(url, {"output": "3"}, headers={"HX-Request": "true"})
    assert response.headers["HX-Redirect"] == failed_run.get_absolute_url()


def test_pages_retry_fire_and_send_event(worker, client, member, waits):
    client.force_login(member)
    sleeping = waiting(start(waits, {"kind": "sleep"}))
    nap = step_of(sleeping, "Nap")
    assert "Fire now" in client.get(sleeping.get_absolute_url()).content.decode()
    response = client.post(reverse("runs:fire", args=[sleeping.pk, nap.pk]), follow=True)
    assert "“Nap” woke now" in response.content.decode()
    assert ended(sleeping).status == RunStatus.SUCCEEDED

    asking = waiting(start(waits, {"kind": "event"}))
    page = client.get(asking.get_absolute_url()).content.decode()
    assert 'id="event-form"' in page
    assert 'value="go"' in page
    url = reverse("runs:send_event", args=[asking.pk])
    response = client.post(url, {"type": "go", "payload": "[1,"}, follow=True)
    assert "The event was not sent: " in response.content.decode()
    response = client.post(url, {"type": "go", "payload": '{"ok": true}'}, follow=True)
    assert "Event “go” sent; the run carries on." in response.content.decode()
    assert ended(asking).output["got"] == {"ok": True}

    response = client.post(reverse("runs:retry_from", args=[asking.pk, nap.pk]))
    assert response.status_code == 404  # a step of another run
    draw = step_of(asking, "Draw")
    response = client.post(reverse("runs:retry_from", args=[asking.pk, draw.pk]), follow=True)
    assert "Only a failed or cancelled run can be retried" in response.content.decode()
    actions = [e.action for e in audits()]
    assert actions == ["step.fire", "run.event"]
    assert all(e.actor_name == "mo" for e in audits())


def test_pages_refuse_viewers_and_other_organizations(client, viewer, outsider, loop):
    run = RunFactory(loop=loop, status=RunStatus.FAILED)
    step = Step.objects.create(run=run, order=0, key="A", name="A", status="failed")
    urls = [
        (reverse("runs:retry_from", args=[run.pk, step.pk]), {}),
        (reverse("runs:complete", args=[run.pk, step.pk]), {"output": "1"}),
        (reverse("runs:fire", args=[run.pk, step.pk]), {}),
        (reverse("runs:send_event", args=[run.pk]), {"type": "go"}),
    ]
    client.force_login(viewer)
    page = client.get(run.get_absolute_url()).content.decode()
    assert "Retry from here" not in page
    assert "Complete with output" not in page
    for url, data in urls:
        assert client.post(url, data).status_code == 403
    client.force_login(outsider)
    for url, data in urls:
        assert client.post(url, data).status_code == 404
    assert Step.objects.get(pk=step.pk).status == "failed"
    assert audits() == []
