"""The engine's first slice: steps, retries, failures, replay, logs and CPU time, executed by
the worker's code path in the real sandbox."""

import pytest
from django.utils import timezone

from loops.services import loop_deploy
from loops_project.errors import Invalid
from runs.models import LogEntry, Run, Step, Timer
from runs.services import run_resume
from tests.engine_helpers import deploy, execute, fire_timer_of, program, run_program, trigger

pytestmark = pytest.mark.django_db


def test_greeting_succeeds_with_one_recorded_step(org, loop):
    run = execute(trigger(loop, {"name": "Khaya"}))
    assert run.status == "succeeded"
    assert run.output == {"greeting": "Hello, Khaya!"}
    step = run.steps.get()
    assert (step.name, step.kind, step.status, step.attempts, step.output) == (
        "Build greeting", "do", "succeeded", 1, "Hello, Khaya!"
    )  # fmt: skip
    assert step.line == 4
    assert run.started_at <= run.completed_at
    assert run.duration_ms is not None
    assert run.total_steps == 1


def test_step_that_raises_twice_then_succeeds_records_three_attempts(org):
    run = run_program(
        org,
        """
        def flaky():
            if step.attempt < 3:
                raise ValueError("not yet")
            return step.attempt
        return {"calls": step.do("Flaky", flaky, retries=Retry(limit=3, delay=0))}
        """,
    )
    assert run.status == "succeeded"
    assert run.output == {"calls": 3}
    step = run.steps.get()
    assert (step.status, step.attempts) == ("succeeded", 3)
    warnings = LogEntry.objects.filter(run=run, level="warning").values_list("message", flat=True)
    assert len(warnings) == 2
    assert "attempt 1 failed: ValueError: not yet" in warnings[0]


def test_a_retry_delay_holds_no_worker_and_a_timer_ends_it(org):
    loop = deploy(
        org,
        program(
            """
            def flaky():
                if step.attempt < 3:
                    raise ValueError(f"attempt {step.attempt}")
                return step.attempt
            return step.do("Flaky", flaky, retries=Retry(limit=3, delay=30, backoff=2))
            """
        ),
    )
    run = execute(trigger(loop))
    assert run.status == "waiting"  # the execution ended: no worker waits the 30 s
    assert run.pending["kind"] == "retry"
    assert run.pending["attempt"] == 2
    flaky = run.steps.get()
    assert (flaky.status, flaky.attempts, flaky.error["message"]) == ("waiting", 1, "attempt 1")
    timer = Timer.objects.get(target=flaky.pk)
    assert 25 < (timer.due_at - timezone.now()).total_seconds() <= 30

    assert fire_timer_of(flaky) == 1
    run = execute(Run.objects.get(pk=run.pk))
    assert run.status == "waiting"
    assert run.steps.get().attempts == 2
    assert 55 < (Timer.objects.get().due_at - timezone.now()).total_seconds() <= 60  # backoff

    assert fire_timer_of(flaky) == 1
    run = execute(Run.objects.get(pk=run.pk))
    assert (run.status, run.output) == ("succeeded", 3)
    assert (run.steps.get().status, run.steps.get().attempts) == ("succeeded", 3)
    assert run.executions == 3


def test_failing_step_fails_the_run_with_its_message_and_step_name(org):
    run = run_program(
        org,
        """
        step.do("Look up", lambda: 1)
        def charge():
            raise ValueError("card declined")
        step.do("Charge card", charge, retries=0)
        step.do("Never", lambda: 2)
        return "unreachable"
        """,
    )
    assert run.status == "failed"
    assert run.error_step == "Charge card"
    assert "Charge card" in run.error_message
    assert "card declined" in run.error_message
    assert 'line 7, in charge\n    raise ValueError("card declined")' in run.error_traceback
    assert "runtime.py" not in run.error_traceback  # only the program's own frames
    assert run.output is None
    statuses = list(run.steps.order_by("order").values_list("name", "status", "attempts"))
    assert statuses == [("Look up", "succeeded", 1), ("Charge card", "failed", 1)]
    failed = run.steps.get(name="Charge card")
    assert failed.error["message"] == "card declined"
    assert failed.error["type"] == "ValueError"


def test_exhausted_retries_fail_the_step_after_all_attempts(org):
    run = run_program(
        org,
        """
        def boom():
            raise RuntimeError("still broken")
        return step.do("Boom", boom, retries=Retry(limit=2, delay=0))
        """,
    )
    assert run.status == "failed"
    assert run.steps.get().attempts == 3


def test_resumed_run_replays_finished_steps_without_calling_them(org):
    loop = deploy(
        org,
        program(
            """
            def pick():
                print("picking")
                return random.randint(1, 10**9)
            first = step.do("Pick", pick)
            def second():
                if event.attempt == 1:
                    raise RuntimeError("transient outage")
                return first
            return {"first": first, "second": step.do("Use", second, retries=0)}
            """,
            imports="import random",
        ),
    )
    run = execute(trigger(loop))
    assert run.status == "failed"
    picked = run.steps.get(name="Pick").output
    loop_deploy(loop=loop, code=program('return "version 2"'))  # resume keeps its pinned version

    run_resume(run=run)
    run = execute(run)
    assert run.status == "succeeded"
    assert run.attempt == 2
    assert run.version.number == 1
    assert run.output == {"first": picked, "second": picked}
    pick = run.steps.get(name="Pick")
    assert pick.attempts == 1  # replayed from its checkpoint, not called again
    assert (
        list(LogEntry.objects.filter(run=run).values_list("message", flat=True)).count("picking")
        == 1
    )
    assert run.steps.get(name="Use").status == "succeeded"


def test_step_names_used_in_a_python_loop_give_distinct_steps(org):
    run = run_program(
        org,
        """
        total = 0
        for i in range(3):
            total += step.do("Add", lambda i=i: i * 10)
        return total
        """,
    )
    assert run.output == 30
    keys = list(run.steps.order_by("order").values_list("key", "name"))
    assert keys == [("Add", "Add"), ("Add#2", "Add"), ("Add#3", "Add")]


def test_prints_and_logging_become_log_lines_with_their_step(org):
    run = run_program(
        org,
        """
        print("starting", event.body["n"])
        log = logging.getLogger("ops")
        def work():
            log.warning("inside %s", "work")
            return 1
        step.do("Work", work)
        logging.error("done")
        return None
        """,
        input={"n": 7},
        imports="import logging",
    )
    assert run.status == "succeeded"
    lines = list(
        LogEntry.objects.filter(run=run)
        .order_by("time", "id")
        .values_list("level", "message", "step__name")
    )
    assert lines == [
        ("info", "starting 7", None),
        ("warning", "inside work", "Work"),
        ("error", "done", None),
    ]


def test_cpu_time_of_the_user_code_is_recorded(org):
    run = run_program(org, "return step.do('Burn', lambda: sum(i * i for i in range(3_000_000)))")
    assert run.status == "succeeded"
    assert run.cpu_time_ms >= 50


def test_a_step_result_that_is_not_json_fails_the_step_clearly(org):
    run = run_program(org, "return step.do('Bad', lambda: {1, 2, 3})")
    assert run.status == "failed"
    assert "not JSON-serializable" in run.error_message
    assert run.error_step == "Bad"


def test_a_step_timeout_raises_step_timeout(org):
    run = run_program(
        org,
        """
        try:
            step.do("Slow", lambda: time.sleep(5), timeout=0.2, retries=0)
        except StepTimeout as exc:
            return {"timedOut": str(exc)}
        """,
        imports="import time",
    )
    assert run.status == "succeeded"
    assert "timed out after 0.2 s" in run.output["timedOut"]
    assert run.steps.get().status == "failed"


def test_deploy_of_a_syntax_error_names_the_line_and_saves_nothing(org, loop):
    code = "class L(Loop):\n    def run(self, event, step):\n        return (1 +\n"
    with pytest.raises(Invalid) as caught:
        deploy(org, code, slug="broken")
    assert caught.value.details["line"] == 3
    assert "Line 3" in caught.value.message
    assert not type(loop).objects.filter(slug="broken").exists()


@pytest.mark.parametrize(
    ("code", "line", "reason"),
    [
        ("import json\nclass A(Loop):\n    def go(self):\n        pass\n", 2, "must define run"),
        (
            "class A(Loop):\n    def run(self, event):\n        pass\n",
            2,
            "exactly (self, event, step)",
        ),
        ("x = 1\n", 1, "one subclass of Loop"),
        (
            "class A(Loop):\n    def run(self, event, step):\n        pass\n"
            "class B(Loop):\n    def run(self, event, step):\n        pass\n",
            4,
            "exactly one Loop subclass",
        ),
    ],
)
def test_deploy_checks_the_shape_of_the_program(org, code, line, reason):
    with pytest.raises(Invalid) as caught:
        deploy(org, code, slug="shape")
    assert caught.value.details["line"] == line
    assert reason in caught.value.message


def test_steps_are_ordered_and_the_run_counts_them(org):
    run = run_program(org, "return [step.do(n, lambda n=n: n) for n in ('a', 'b', 'c')]")
    assert run.output == ["a", "b", "c"]
    assert list(Step.objects.filter(run=run).values_list("order", flat=True)) == [0, 1, 2]
    assert run.total_steps == 3


@pytest.mark.parametrize("slug", ["new", "x" * 65, "Not A Slug", ""])
def test_loop_slugs_are_checked_before_anything_is_saved(org, slug):
    with pytest.raises(Invalid) as caught:
        deploy(org, program("return 1"), slug=slug)
    assert caught.value.details == {"field": "slug"}
