"""Durable waits and run control, executed by the worker's code path in the real sandbox.

Between executions the run holds no worker: it is `waiting`, and the next execution replays
it from the start, returning finished steps from their checkpoints.
"""

import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest.mock import ANY

import pytest
from django.utils import timezone

from accounts.audit import Actor
from loops.schedules import fire_due_schedules, schedule_create
from loops.services import loop_deploy
from loops_project.errors import Conflict, DomainError, Invalid, TooLarge
from runs import outbound
from runs.clock import fire_due_timers
from runs.models import LogEntry, Run, RunEvent, ScanRequest, Step, Timer
from runs.services import (
    run_cancel,
    run_respond,
    run_restart,
    run_resume,
    run_send_event,
    scan_submit_result,
)
from tests.engine_helpers import deploy, execute, fire_timer_of, program, run_program, trigger

pytestmark = pytest.mark.django_db

RANDOM_THEN_EVENT = program(
    """
    first = step.do("Pick", lambda: random.randint(1, 10**12))
    payload = step.wait_for_event("Wait for approval", "approved", timeout=3600)
    return {"first": first, "payload": payload}
    """,
    imports="import random",
)


def test_sleep_suspends_without_a_worker_and_a_timer_wakes_it(org):
    loop = deploy(org, program('step.sleep("Nap", 120)\nreturn "rested"'))
    run = execute(trigger(loop))
    assert run.status == "waiting"
    assert run.pending["kind"] == "sleep"
    assert run.pending["stepName"] == "Nap"
    nap = run.steps.get()
    assert (nap.kind, nap.status) == ("sleep", "waiting")
    timer = Timer.objects.get(kind="step", target=nap.pk)
    assert abs((timer.due_at - (timezone.now() + timedelta(seconds=120))).total_seconds()) < 5
    assert fire_due_timers() == 0  # not due
    # A timer that fires early (another clock's time is ahead) is set again for the wake time.
    Timer.objects.filter(pk=timer.pk).update(due_at=timezone.now())
    assert fire_due_timers() == 1
    assert Run.objects.get(pk=run.pk).status == "waiting"
    assert Timer.objects.get(target=nap.pk).due_at == nap.wake_at

    assert fire_timer_of(nap) == 1
    assert not Timer.objects.exists()
    run.refresh_from_db()
    assert run.status == "pending"
    run = execute(run)
    assert (run.status, run.output) == ("succeeded", "rested")
    assert run.steps.get().status == "succeeded"


def test_sleep_until_a_past_time_does_not_suspend(org):
    run = run_program(org, 'step.sleep_until("Past", "2020-01-01T00:00:00+00:00")\nreturn 1')
    assert run.status == "succeeded"
    assert run.steps.get().kind == "sleep"


def test_event_sent_before_the_wait_is_kept_and_consumed_by_it(org):
    loop = deploy(org, RANDOM_THEN_EVENT)
    run = trigger(loop)
    event = run_send_event(run=run, type="approved", payload={"by": "ops"})
    run = execute(run)
    assert run.status == "succeeded"
    assert run.output["payload"] == {"by": "ops"}
    event.refresh_from_db()
    assert event.consumed_by == run.steps.get(name="Wait for approval")


def test_replay_after_an_event_returns_the_first_steps_saved_value(org):
    loop = deploy(org, RANDOM_THEN_EVENT)
    run = execute(trigger(loop))
    assert run.status == "waiting"
    assert run.pending == {
        "kind": "event",
        "eventType": "approved",
        "stepName": "Wait for approval",
    }
    picked = run.steps.get(name="Pick").output

    run_send_event(run=run, type="other", payload=1)  # kept, does not wake the run
    assert Run.objects.get(pk=run.pk).status == "waiting"
    run_send_event(run=run, type="approved", payload={"ok": True})
    assert Run.objects.get(pk=run.pk).status == "pending"
    run = execute(run)
    assert run.status == "succeeded"
    assert run.output == {"first": picked, "payload": {"ok": True}}
    assert run.steps.get(name="Pick").attempts == 1
    assert run.executions == 2
    assert RunEvent.objects.filter(run=run, consumed_by=None).count() == 1


def test_event_to_an_ended_run_is_a_conflict(org, loop):
    run = execute(trigger(loop))
    with pytest.raises(Conflict):
        run_send_event(run=run, type="x")


def test_a_wait_that_times_out_raises_step_timeout(org):
    loop = deploy(
        org,
        program(
            """
            try:
                step.wait_for_event("Callback", "done", timeout=30)
            except StepTimeout as exc:
                return {"timedOut": str(exc)}
            """
        ),
    )
    run = execute(trigger(loop))
    wait = run.steps.get()
    assert fire_timer_of(wait) == 1
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "succeeded"
    assert "timed out" in run.output["timedOut"]
    assert run.steps.get().status == "failed"


ASK_APPROVE = program(
    """
    name = step.ask("Name", "Who should we greet?")
    decision = step.approve("Send", f"Send a greeting to {name}?", tool="email",
                            tool_input={"to": name}, on_reject=event.body.get("onReject", "stop"))
    step.do("Deliver", lambda: f"sent to {name}")
    return {"name": name, "decision": decision}
    """
)


def _waiting_for_approval(org, on_reject="stop"):
    loop = deploy(org, ASK_APPROVE)
    run = execute(trigger(loop, {"onReject": on_reject}))
    assert run.status == "waiting"
    assert run.pending == {"kind": "input", "prompt": "Who should we greet?", "stepName": "Name",
                           "stepId": ANY, "since": ANY, "assignees": []}  # fmt: skip
    run_respond(run=run, action="input", value="Khaya", has_value=True,
                actor=Actor.system("olivia"))  # fmt: skip
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "waiting"
    assert run.pending == {
        "kind": "approval",
        "prompt": "Send a greeting to Khaya?",
        "tool": "email",
        "toolInput": {"to": "Khaya"},
        "stepName": "Send",
        "stepId": run.steps.get(name="Send").pk,
        "since": ANY,
        "assignees": [],
    }
    return run


def test_approved_approval_lets_the_program_go_on(org):
    run = _waiting_for_approval(org)
    run_respond(run=run, action="approve", reason="looks right", actor=Actor.system("olivia"))
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "succeeded"
    assert run.output["decision"] == {"approved": True, "reason": "looks right", "by": "olivia"}
    assert run.steps.get(name="Deliver").output == "sent to Khaya"


def test_rejected_approval_with_stop_ends_the_run_succeeded_and_runs_no_later_step(org):
    run = _waiting_for_approval(org, on_reject="stop")
    run_respond(run=run, action="reject", reason="wrong person")
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "succeeded"
    assert run.output is None
    send = run.steps.get(name="Send")
    assert send.status == "rejected"
    assert send.output["reason"] == "wrong person"
    assert not run.steps.filter(name="Deliver").exists()


def test_rejected_approval_with_return_hands_the_decision_to_the_program(org):
    run = _waiting_for_approval(org, on_reject="return")
    run_respond(run=run, action="reject", reason="not today")
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "succeeded"
    assert run.output["decision"]["approved"] is False
    assert run.output["decision"]["reason"] == "not today"


def test_respond_rejects_mismatched_actions_and_runs_not_waiting_for_a_person(org, loop):
    ended = execute(trigger(loop))
    with pytest.raises(Conflict):
        run_respond(run=ended, action="approve")
    asking = execute(trigger(deploy(org, ASK_APPROVE, slug="asker")))
    with pytest.raises(DomainError) as mismatch:
        run_respond(run=asking, action="approve")
    assert mismatch.value.status == 400
    with pytest.raises(DomainError) as missing:
        run_respond(run=asking, action="input")
    assert (missing.value.status, missing.value.details) == (400, {"field": "input"})
    assert Run.objects.get(pk=asking.pk).status == "waiting"  # nothing lost


def test_facial_scan_waits_for_its_result_and_a_second_result_is_a_conflict(org, client):
    loop = deploy(
        org,
        program('r = step.wait_for_scan("Scan", subject={"name": "Khaya"})\nreturn r["heartRate"]'),
    )
    run = execute(trigger(loop))
    assert run.status == "waiting"
    scan = ScanRequest.objects.get(run=run)
    assert scan.pk.startswith("scan_")
    assert run.pending == {"kind": "scan", "scanId": scan.pk, "stepName": "Scan"}
    page = client.get(scan.get_absolute_url())
    assert page.status_code == 200
    assert b"Submit scan result" in page.content

    scan_submit_result(scan=scan, result={"heartRate": 72, "oxygenSaturation": 98})
    with pytest.raises(Conflict):
        scan_submit_result(scan=scan, result={"heartRate": 80})
    run = execute(Run.objects.get(pk=run.pk))
    assert (run.status, run.output) == ("succeeded", 72)


def test_scan_page_takes_the_result_from_the_person(org, client):
    loop = deploy(org, program('return step.wait_for_scan("Scan")'))
    run = execute(trigger(loop))
    scan = ScanRequest.objects.get(run=run)
    response = client.post(
        scan.get_absolute_url(), {"heartRate": "64", "extra": '{"mood": "calm"}'}
    )
    assert response.status_code == 302
    run = execute(Run.objects.get(pk=run.pk))
    assert run.output == {"heartRate": 64.0, "mood": "calm"}


def test_child_run_is_nested_under_the_parent_step_and_returns_its_output(org, loop):
    parent_loop = deploy(
        org, program('out = step.run_loop("Greet", "greeting", {"name": "Sizwe"})\nreturn out')
    )
    parent = execute(trigger(parent_loop))
    assert parent.status == "waiting"
    child = Run.objects.get(parent_step__run=parent)
    assert parent.pending["kind"] == "child"
    assert parent.pending["childRunId"] == child.pk
    assert child.trigger_type == "system"
    execute(child)
    parent = execute(Run.objects.get(pk=parent.pk))
    assert parent.status == "succeeded"
    assert parent.output == {"greeting": "Hello, Sizwe!"}
    assert parent.steps.get().kind == "child"


def test_a_child_run_without_a_body_gets_an_empty_object(org, loop):
    parent = execute(trigger(deploy(org, program('return step.run_loop("Greet", "greeting")'))))
    child = execute(Run.objects.get(parent_step__run=parent))
    assert (child.input, child.output) == ({}, {"greeting": "Hello, there!"})
    parent = execute(Run.objects.get(pk=parent.pk))
    assert (parent.status, parent.output) == ("succeeded", {"greeting": "Hello, there!"})


def test_a_failed_child_run_fails_the_parent_with_its_error(org):
    deploy(org, program("raise ValueError('child broke')"), slug="breaks")
    parent = execute(
        trigger(deploy(org, program('return step.run_loop("Call", "breaks")'), slug="p"))
    )
    execute(Run.objects.get(parent_step__run=parent))
    parent = execute(Run.objects.get(pk=parent.pk))
    assert parent.status == "failed"
    assert "child broke" in parent.error_message
    assert parent.error_step == "Call"


def test_each_marks_inner_steps_with_iteration_index_and_item(org):
    run = run_program(
        org,
        """
        out = []
        for i, item in step.each("Items", ["a", "b"]):
            out.append(step.do("Upper", lambda item=item: item.upper()))
        return out
        """,
    )
    assert run.output == ["A", "B"]
    each = run.steps.get(kind="each")
    inner = list(
        run.steps.filter(parent=each)
        .order_by("order")
        .values_list("iteration", "iteration_item", "output")
    )
    assert inner == [(0, "a", "A"), (1, "b", "B")]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        page = None
        if self.path.startswith("/missing"):
            body, status = json.dumps({"error": "nope"}).encode(), 404
        elif self.path.startswith("/paged/"):  # endless pages of 3,000 bytes and more
            page = int(self.path.rsplit("/", 1)[1])
            body, status = json.dumps({"page": page, "pad": "x" * 3000}).encode(), 200
        else:
            body, status = json.dumps({"path": self.path}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Test", "yes")
        if page is not None:
            self.send_header("Link", f'</paged/{page + 1}>; rel="next"')
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_to_loopback_is_refused_by_default(org, local_server):
    run = run_program(org, f'return step.http("Call", "GET", "{local_server}/x").body')
    assert run.status == "failed"
    assert "refused" in run.error_message
    assert run.steps.get().kind == "http"


def test_http_records_request_and_response(org, local_server, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    run = run_program(
        org,
        f'r = step.http("Call", "GET", "{local_server}/hello", params={{"a": 1}})\nreturn r.body',
    )
    assert run.status == "succeeded"
    assert run.output == {"path": "/hello?a=1"}
    call = run.steps.get()
    assert call.input["method"] == "GET"
    assert call.output["status"] == 200
    assert call.output["headers"]["x-test"] == "yes"


def test_http_error_fails_the_step_with_status_headers_and_parsed_body(org, local_server, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    run = run_program(org, f'return step.http("Call", "GET", "{local_server}/missing").body')
    assert run.status == "failed"
    error = run.steps.get().error
    assert error["status"] == 404
    assert error["body"] == {"error": "nope"}
    assert error["headers"]["x-test"] == "yes"


PARAMS_SHAPE = "params must be an object of names to values, or a list of [name, value] pairs"


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ('headers=[["a", "b"]]', "headers must be an object of names to strings"),
        ('headers={"a": {"b": 1}}', "headers must be an object of names to strings"),
        ('params={"a": {"b": 1}}', PARAMS_SHAPE),
        ('params=[["a"]]', PARAMS_SHAPE),
        ("timeout=-1", "timeout must be a positive number of seconds"),
    ],
)
def test_a_request_of_the_wrong_shape_fails_its_step_and_nothing_is_sent(
    org, local_server, settings, arguments, complaint
):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    run = run_program(org, f'return step.http("Call", "GET", "{local_server}/x", {arguments})')
    assert run.status == "failed"
    assert run.error_message == f"Step 'Call' failed: HttpError: {complaint}"
    call = run.steps.get()
    assert (call.status, call.output) == ("failed", None)
    assert run.executions == 1  # ended by its step, not taken up again after a lease


def test_params_as_name_value_pairs_are_all_sent(org, local_server, settings):
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    run = run_program(
        org,
        f"""return step.http("Call", "GET", "{local_server}/q",
                                  params=[["b", 2], ["a", "x"], ["b", 3]]).body""",
    )
    assert (run.status, run.output) == ("succeeded", {"path": "/q?b=2&b=3&a=x"})


def test_the_pages_of_a_call_together_keep_within_what_one_step_may_keep(
    org, local_server, settings
):
    """Each page is read within what is left of the step's output limit: the call stops at
    the page that would go over it, and its step fails with the reason."""
    settings.LOOPS_HTTP_ALLOW_PRIVATE = True
    settings.LOOPS_MAX_STEP_OUTPUT_BYTES = 8000
    run = run_program(org, f'return step.http("Pages", "GET", "{local_server}/paged/1", pages=50)')
    assert run.status == "failed"
    call = run.steps.get()
    assert call.status == "failed"
    assert "larger than the step may keep (8000 bytes" in call.error["message"]
    # A page is kept as its parsed body and its text, about 6,000 bytes: one fits.
    assert [record["body"]["page"] for record in call.output] == [1]
    assert len(json.dumps(call.output)) <= 8000


def test_a_redirect_to_an_internal_address_is_refused(org, settings, monkeypatch):
    """The first hop is allowed (treated as public here); its redirect to another address
    that is not public must be refused before any connection to it."""

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/admin")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(outbound, "_is_public", lambda address: address == "127.0.0.1")
        url = f"http://127.0.0.1:{server.server_address[1]}/start"
        run = run_program(org, f'return step.http("Call", "GET", "{url}").status')
    finally:
        server.shutdown()
    assert run.status == "failed"
    assert "127.0.0.2" in run.error_message
    assert "refused" in run.error_message


@pytest.mark.parametrize(
    "url",
    ["http://localhost/", "http://10.0.0.1/", "http://169.254.169.254/latest", "http://[::1]/"],
)
def test_internal_targets_are_refused(url):
    with pytest.raises(outbound.TargetRefused):
        outbound.pin_target(url)


def test_cancel_a_waiting_run_and_resume_it(org):
    loop = deploy(org, RANDOM_THEN_EVENT)
    run = execute(trigger(loop))
    picked = run.steps.get(name="Pick").output
    run = run_cancel(run=run)
    assert run.status == "cancelled"
    assert run.completed_at is not None
    with pytest.raises(Conflict):
        run_cancel(run=run)

    run = run_resume(run=run)
    assert (run.status, run.attempt) == ("pending", 2)
    run = execute(run)
    assert run.status == "waiting"  # waits again for its event, first step replayed
    run_send_event(run=run, type="approved", payload="yes")
    run = execute(Run.objects.get(pk=run.pk))
    assert run.output == {"first": picked, "payload": "yes"}


def test_resume_is_only_for_failed_or_cancelled_runs(org, loop):
    with pytest.raises(Conflict):
        run_resume(run=execute(trigger(loop)))


def test_restart_runs_the_newest_version_and_leaves_the_original(org, loop):
    original = execute(trigger(loop, {"name": "Khaya"}))
    loop_deploy(loop=loop, code=program('return {"v": 2, "name": event.body["name"]}'))
    new = execute(run_restart(run=original))
    assert new.restarted_from_id == original.pk
    assert new.version.number == 2
    assert new.input == original.input
    assert new.output == {"v": 2, "name": "Khaya"}
    original.refresh_from_db()
    assert original.output == {"greeting": "Hello, Khaya!"}
    assert original.version.number == 1


def test_limit_on_steps_per_run(org, settings):
    settings.LOOPS_MAX_STEPS_PER_RUN = 3
    run = run_program(org, "for i in range(10):\n    step.do('S', lambda: 1)")
    assert run.status == "failed"
    assert "limit of 3 steps" in run.error_message
    assert run.steps.count() == 3


def test_limit_on_log_lines_per_run(org, settings):
    settings.LOOPS_MAX_LOG_LINES_PER_RUN = 5
    run = run_program(org, "for i in range(20):\n    print(i)")
    assert run.status == "succeeded"
    messages = list(
        LogEntry.objects.filter(run=run).order_by("id").values_list("message", flat=True)
    )
    assert messages[:5] == ["0", "1", "2", "3", "4"]
    assert messages[5:] == ["Log limit of 5 lines reached; later lines dropped."]


def test_the_log_limit_counts_every_execution_of_the_run(org, settings):
    """A run that waits is executed again; its lines do not start counting afresh."""
    settings.LOOPS_MAX_LOG_LINES_PER_RUN = 5
    body = (
        "step.do('Before', lambda: print('a') or print('b') or print('c'))\n"
        "step.sleep('Nap', 60)\n"
        "step.do('After', lambda: [print(x) for x in 'defg'])"
    )
    run = run_program(org, body)
    assert run.status == "waiting"
    fire_timer_of(run.steps.get(name="Nap"))
    run = execute(run)
    assert run.status == "succeeded", run.error_message
    messages = list(
        LogEntry.objects.filter(run=run).order_by("time", "id").values_list("message", flat=True)
    )
    assert messages == [
        "a",
        "b",
        "c",
        "d",
        "e",
        "Log limit of 5 lines reached; later lines dropped.",
    ]


def test_retry_notes_count_as_log_lines(org, settings):
    """A step retried at once, thousands of times, writes no more log lines than the limit."""
    settings.LOOPS_MAX_LOG_LINES_PER_RUN = 5
    body = (
        "def fail():\n"
        "    raise ValueError('x')\n"
        "return step.do('Again', fail, retries=Retry(limit=50, delay=0, backoff=1))"
    )
    run = run_program(org, body)
    assert run.status == "failed"
    assert run.steps.get().attempts == 51
    messages = list(
        LogEntry.objects.filter(run=run).order_by("id").values_list("message", flat=True)
    )
    assert len(messages) == 5 + 2  # the limit's note, and the run's error
    assert messages[0] == "Step 'Again' attempt 1 failed: ValueError: x; retrying in 0 s"
    assert messages[5] == "Log limit of 5 lines reached; later lines dropped."


def test_a_retrys_wait_past_a_floats_range_is_its_longest(org):
    """The 1,025th retry of a doubling wait is max_delay long, not an OverflowError."""
    run = run_program(org, "return Retry(delay=1, backoff=2, max_delay=60).wait_before(1025)")
    assert (run.status, run.output) == ("succeeded", 60.0)


def test_limit_on_input_size(org, loop, settings):
    settings.LOOPS_MAX_INPUT_BYTES = 100
    with pytest.raises(TooLarge) as caught:
        trigger(loop, {"name": "x" * 200})
    assert "limit is 100 bytes" in caught.value.message
    assert not Run.objects.exists()


def test_limit_on_step_output_size(org, settings):
    settings.LOOPS_MAX_STEP_OUTPUT_BYTES = 100
    run = run_program(org, "return step.do('Big', lambda: 'x' * 1000)")
    assert run.status == "failed"
    assert "over the limit of 100 bytes" in run.error_message


def test_limit_on_wait_time(org, settings):
    settings.LOOPS_MAX_WAIT_SECONDS = 60
    run = run_program(org, 'step.sleep("Long", 10 * 24 * 3600)')
    until = Step.objects.get(run=run).wake_at
    assert until <= timezone.now() + timedelta(seconds=61)


def test_bad_cron_expression_is_invalid(loop):
    with pytest.raises(Invalid) as caught:
        schedule_create(loop=loop, cron="61 * * * *")
    assert caught.value.details == {"field": "cron"}
    with pytest.raises(Invalid):
        schedule_create(loop=loop, cron="* * * * *", timezone_name="Mars/Olympus")


def test_due_schedules_start_system_runs_in_their_time_zone(loop):
    schedule = schedule_create(
        loop=loop, cron="30 9 * * *", timezone_name="Africa/Johannesburg", input={"name": "cron"}
    )
    assert schedule.next_run_at.hour == 7  # 09:30 SAST is 07:30 UTC
    assert schedule.next_run_at.minute == 30
    assert fire_due_schedules(now=schedule.next_run_at - timedelta(seconds=1)) == 0
    assert fire_due_schedules(now=schedule.next_run_at) == 1
    run = Run.objects.get()
    assert (run.trigger_type, run.input) == ("system", {"name": "cron"})
    schedule.refresh_from_db()
    assert schedule.next_run_at - schedule.last_run_at == timedelta(days=1)


def test_a_replayed_step_failure_is_the_exception_the_program_first_caught(org):
    loop = deploy(org, program(
        """
        try:
            step.do("Parse", lambda: int("not a number"), retries=0)
        except ValueError:
            caught = "ValueError"
        try:
            step.do("Look up", lambda: {}["missing"], retries=0)
        except KeyError:
            caught += " and KeyError"
        step.wait_for_event("Go", "go")
        return caught
        """
    ))  # fmt: skip
    run = execute(trigger(loop))
    assert run.status == "waiting"
    run_send_event(run=run, type="go")
    run = execute(Run.objects.get(pk=run.pk))  # replays both failures from their checkpoints
    assert (run.status, run.output) == ("succeeded", "ValueError and KeyError")
