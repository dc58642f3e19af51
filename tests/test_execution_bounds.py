"""Bounds the worker holds an execution to, whatever the sandboxed program says: its output,
each step's output, and everything a run stores over all its executions."""

import pytest

from tests.engine_helpers import execute, fire_timer_of, run_program

pytestmark = pytest.mark.django_db


def test_a_run_whose_output_is_over_the_limit_fails_with_a_clear_error(org, settings):
    settings.LOOPS_MAX_OUTPUT_BYTES = 1000
    run = run_program(org, "return 'x' * 2000")
    assert run.status == "failed"
    assert "run() returned 2002 bytes of output, over the limit of 1000 bytes" in run.error_message
    assert run.output is None
    assert run_program(org, "return 'x' * 900", slug="small").status == "succeeded"


# With the guards off the program can write protocol messages on its socket itself, as if the
# runtime's own checks had been bypassed: the worker must still hold the bounds.
FORGE_DONE = """
import json, os
message = {"op": "done", "output_json": json.dumps("x" * 5000)}
for fd in range(3, 64):
    try:
        os.write(fd, (json.dumps(message) + "\\n").encode())
    except OSError:
        pass
os._exit(0)
"""


def test_the_worker_holds_the_output_limit_even_if_the_sandbox_lies(org, settings):
    settings.LOOPS_PYTHON_GUARDS = False
    settings.LOOPS_MAX_OUTPUT_BYTES = 1000
    run = run_program(org, FORGE_DONE)
    assert run.status == "failed"
    assert "The run's output is 5002 bytes, over the limit of 1000 bytes" in run.error_message
    assert run.output is None


FORGE_STEP = """
import json, os
def send(fd, message):
    os.write(fd, (json.dumps(message) + "\\n").encode())
for fd in range(3, 64):
    try:
        send(fd, {"op": "step", "key": "Big", "name": "Big", "kind": "do"})
    except OSError:
        continue
    os.read(fd, 65536)  # the reply
    send(fd, {"op": "step_done", "key": "Big", "status": "succeeded",
              "output_json": json.dumps("y" * 5000)})
    send(fd, {"op": "done", "output_json": "1"})
    break
os._exit(0)
"""


def test_the_worker_holds_the_step_output_limit_even_if_the_sandbox_lies(org, settings):
    settings.LOOPS_PYTHON_GUARDS = False
    settings.LOOPS_MAX_STEP_OUTPUT_BYTES = 1000
    run = run_program(org, FORGE_STEP)
    step = run.steps.get()
    assert step.status == "failed"
    assert step.output is None
    assert step.error["message"] == "The step's output is 5002 bytes, over the limit of 1000 bytes"
    assert run.status == "failed"  # the run does not carry on as if the step had its output


def test_a_run_that_stores_more_than_its_limit_fails(org, settings):
    settings.LOOPS_MAX_RUN_BYTES = 50_000
    run = run_program(
        org, "for i in range(20):\n    step.do(f'Chunk {i}', lambda: 'z' * 10_000)\nreturn 'all'"
    )
    assert run.status == "failed"
    assert "exceeded the limit of 50000 bytes stored per run" in run.error_message
    assert run.steps.filter(status="succeeded").count() <= 5
    assert run.stored_bytes <= 50_000 + 11_000  # at most one message past the bound


def test_what_a_run_stores_is_counted_over_all_its_executions(org, settings):
    settings.LOOPS_MAX_RUN_BYTES = 80_000
    body = (
        "step.do('One', lambda: 'a' * 30_000)\nstep.do('Two', lambda: 'b' * 30_000)\n"
        "step.sleep('Nap', 60)\nstep.do('Three', lambda: 'c' * 30_000)\nreturn 'done'"
    )
    run = run_program(org, body)
    assert run.status == "waiting"
    assert run.stored_bytes >= 60_000
    assert fire_timer_of(run.steps.get(name="Nap")) == 1
    run = execute(run)
    assert run.status == "failed"
    assert "exceeded the limit of 80000 bytes stored per run" in run.error_message


# Values a program makes that no database column can hold: the run fails with a clear error,
# or the text is kept with U+FFFD; never a crash of the worker and never a 500 on its pages.
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("return '\\ud800'", "The run's output cannot be stored: output holds a lone UTF-16"),
        ("return {'a': '\\x00'}", "The run's output cannot be stored: output.a holds a NUL"),
        (
            "step.do('Odd', lambda: ['\\udfff'])\nreturn 1",
            "The step's output cannot be stored: output[0] holds a lone UTF-16",
        ),
        (
            "step.do('Meta', lambda: 1, metadata={'n': float('nan')})",
            "Step 'Meta' was given a value Loops cannot store: metadata.n holds NaN",
        ),
    ],
)
def test_values_the_database_cannot_hold_fail_the_run_clearly(org, owner, client, body, reason):
    run = run_program(org, body)
    assert run.status == "failed"
    assert reason in run.error_message
    client.force_login(owner)
    assert client.get(f"/runs/{run.pk}/").status_code == 200


def test_text_the_database_cannot_hold_is_kept_with_a_replacement(org, owner, client):
    run = run_program(org, "print('a\\ud800b\\x00c')\nraise ValueError('bad \\udc80 value')")
    assert run.status == "failed"
    assert run.error_message.endswith("bad \ufffd value")
    printed, error = run.logs.order_by("time", "id")  # the run's error closes its log
    assert printed.message == "a\ufffdb\ufffdc"
    assert (error.level, error.message) == ("error", run.error_message)
    client.force_login(owner)
    assert client.get(f"/runs/{run.pk}/").status_code == 200
