"""Loop code runs sandboxed: refused at deploy, or failing its run, never reaching the worker."""

import os
import threading
from pathlib import Path

import pytest

from loops_project.errors import Invalid
from runs.engine.zygote_client import Zygote, get_zygote, sandbox_identity, sandbox_mode
from tests.engine_helpers import deploy, execute, needs_bwrap, run_program, trigger

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("body", "imports", "reason"),
    [
        ("return 1", "import os", "importing 'os' is not allowed"),
        ("return 1", "from subprocess import run", "importing from 'subprocess' is not allowed"),
        ("return 1", "import sys", "importing 'sys' is not allowed"),
        ("return open('/etc/passwd').read()", "", "'open' is not available in a loop"),
        ("return globals()", "", "'globals' is not available in a loop"),
        ("return ().__class__.__bases__[0].__subclasses__()", "", "invalid attribute name"),
        ("return eval('1 + 1')", "", "Eval calls are not allowed"),
        ("exec('x = 1')", "", "Exec calls are not allowed"),
        ("return self._secret", "", "_secret"),
    ],
)
def test_escapes_are_refused_at_deploy_with_their_line(org, body, imports, reason):
    code = (
        (imports + "\n" if imports else "\n")
        + "class Escape(Loop):\n    def run(self, event, step):\n        "
        + body
        + "\n"
    )
    with pytest.raises(Invalid) as caught:
        deploy(org, code)
    assert reason in caught.value.message
    assert caught.value.details["line"] in (1, 4)


@pytest.mark.parametrize(
    ("body", "imports", "expected"),
    [
        ("return getattr((), '__cla' + 'ss__')", "", "'__class__' is not available"),
        ("return str(uuid.os)", "import uuid", "is a module and is not available"),
        ("return str(json.decoder)", "import json", "is a module and is not available"),
        ("return getattr(step, '_chan' + 'nel')", "", "'_channel' is not available"),
        ("t = '{0.' + 'real}'\nreturn t.format(1)", "", "format() is not available in a loop"),
        ("return str.format('{0.real}', 1)", "", "format() is not available in a loop"),
        ("return getattr(string, 'Format' + 'ter')", "", "'string.Formatter' is not available"),
        ("return getattr(functools, 'update_' + 'wrapper')", "import functools", "not available"),
        ("return getattr((x for x in [1]), 'gi_' + 'frame')", "", "'gi_frame' is not available"),
        (
            "return collections.UserString('{0.run}').format(Loop)",
            "import collections",
            "format() is not available in a loop",
        ),
    ],
)
def test_escapes_at_run_time_fail_the_run(org, body, imports, expected):
    run = run_program(org, body, imports=imports)
    assert run.status == "failed"
    assert expected in run.error_message


FORMATTER_ESCAPE = """{imports}
class F({base}):
    def go(self):
        return super().get_field("0.run.__globals__", [Loop], {{}})

class Escape(Loop):
    def run(self, event, step):
        return str(F().go()[0]["sys"])
"""


@pytest.mark.parametrize(
    ("imports", "base", "line", "reason"),
    [
        ("from string import Formatter", "Formatter", 1, "'string.Formatter' is not available"),
        ("import string", "string.Formatter", 2, "'Formatter' is not available"),
        ("", "string.Formatter", 2, "'Formatter' is not available"),  # the `string` builtin
    ],
)
def test_a_formatter_subclass_is_refused_at_deploy_with_its_line(org, imports, base, line, reason):
    with pytest.raises(Invalid) as caught:
        deploy(org, FORMATTER_ESCAPE.format(imports=imports, base=base))
    assert reason in caught.value.message
    assert caught.value.details["line"] == line


@pytest.mark.parametrize(
    ("code", "line", "reason"),
    [
        (
            "import functools\nclass E(Loop):\n    def run(self, event, step):\n"
            "        g = lambda: 1\n"
            "        functools.update_wrapper(g, Loop.run, (), ('__globals__',))\n",
            5,
            "'update_wrapper' is not available",
        ),
        (
            "from functools import singledispatch\nclass E(Loop):\n"
            "    def run(self, event, step):\n        return 1\n",
            1,
            "'functools.singledispatch' is not available",
        ),
        (
            "class E(Loop):\n    def run(self, event, step):\n"
            "        return (x for x in [1]).gi_frame\n",
            3,
            "gi_frame",
        ),
        (
            "class E(Loop):\n    def run(self, event, step):\n"
            "        return '{0.run.__globals__}'.format(Loop)\n",
            3,
            "str.format() is not available in a loop: use an f-string",
        ),
    ],
)
def test_other_routes_to_unchecked_attributes_are_refused_at_deploy(org, code, line, reason):
    with pytest.raises(Invalid) as caught:
        deploy(org, code)
    assert reason in caught.value.message
    assert caught.value.details["line"] == line


STR_SUBCLASS_ESCAPE = """
class S(str):
    def go(self, obj):
        return super().format(obj)

class Escape(Loop):
    def run(self, event, step):
        return S("{0.run.__globals__[sys]}").go(Loop)
"""


def test_str_format_through_super_fails_the_run(org):
    run = execute(trigger(deploy(org, STR_SUBCLASS_ESCAPE)))
    assert run.status == "failed"
    assert "format() is not available in a loop" in run.error_message
    assert run.output is None


def test_a_programs_own_format_method_is_allowed(org):
    run = run_program(
        org,
        "return Money().format()",
        imports="class Money:\n    def format(self):\n        return '3 EUR'\n",
    )
    assert run.output == "3 EUR"


def test_an_endless_loop_fails_its_run_and_the_next_run_succeeds(org, loop, settings):
    settings.LOOPS_CPU_SECONDS = 1
    run = run_program(org, "while True:\n    pass")
    assert run.status == "failed"
    assert "CPU time limit exceeded (1 s)" in run.error_message
    assert run.cpu_time_ms >= 900
    assert execute(trigger(loop, {"name": "next"})).status == "succeeded"


def test_an_endless_loop_inside_a_step_fails_that_step(org, settings):
    settings.LOOPS_CPU_SECONDS = 1
    run = run_program(org, "def spin():\n    while True:\n        pass\nstep.do('Spin', spin)")
    assert run.status == "failed"
    assert run.error_step == "Spin"
    assert run.steps.get().status == "failed"


@pytest.mark.parametrize(
    "body",
    [
        "x = 'a' * 10**10\nreturn len(x)",
        "hog = []\nwhile True:\n    hog.append('x' * 10**7)",
    ],
)
def test_a_memory_hog_fails_its_run_and_the_next_run_succeeds(org, loop, settings, body):
    settings.LOOPS_MEMORY_MB = 256
    run = run_program(org, body)
    assert run.status == "failed"
    assert "Memory limit exceeded" in run.error_message
    assert execute(trigger(loop, {"name": "next"})).output == {"greeting": "Hello, next!"}


def test_a_program_that_sleeps_past_the_wall_clock_limit_is_stopped(org, loop, settings):
    settings.LOOPS_WALL_SECONDS = 1
    run = run_program(org, "time.sleep(30)", imports="import time")
    assert run.status == "failed"
    assert "Wall-clock limit exceeded (1 s)" in run.error_message
    assert execute(trigger(loop, {"name": "after"})).status == "succeeded"


def test_the_runner_has_no_secrets_no_privileges_and_no_network(org, loop):
    execute(trigger(loop))  # starts this process's zygote
    zygote = get_zygote()
    assert zygote.alive()
    assert zygote.info["uid"] != 0
    assert zygote.info["uid"] == (sandbox_identity() or (os.getuid(),))[0]
    assert zygote.info["seccomp"] == "on"
    # The runner was started with an empty environment: nothing of the worker's leaks in.
    children = Path(f"/proc/{zygote.proc.pid}/task/{zygote.proc.pid}/children").read_text().split()
    pids = [zygote.proc.pid, *map(int, children)]
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"DATABASE_URL" not in environ
        assert b"SECRET" not in environ
    if sandbox_mode() == "bwrap":
        runner = pids[-1]
        # its own network namespace: not the worker's
        assert os.readlink(f"/proc/{runner}/ns/net") != os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{runner}/ns/pid") != os.readlink("/proc/self/ns/pid")
        # no descriptors other than its pipes and /dev/null
        assert len(os.listdir(f"/proc/{runner}/fd")) <= 6


def test_sandbox_mode_is_bubblewrap_here():
    """CI installs bubblewrap: the full sandbox, not the fallback, is what the tests exercise."""
    assert sandbox_mode() == "bwrap"


@pytest.mark.parametrize("mode", [pytest.param("bwrap", marks=needs_bwrap), "process"])
def test_a_zygote_dies_with_the_worker_thread_that_started_it(settings, mode):
    """Each lane of a worker (runs.engine.turns) starts its own zygote: when that thread ends,
    its zygote goes too, in either mode, even while its control socket is still open."""
    settings.LOOPS_SANDBOX = mode
    started = []

    def lane():
        zygote = Zygote()
        zygote.start()
        started.append(zygote)

    thread = threading.Thread(target=lane)
    thread.start()
    thread.join()
    (zygote,) = started  # still referenced: its socket is open
    try:
        assert zygote.proc.wait(timeout=10) is not None  # gone, without anyone stopping it
    finally:
        zygote.control.close()
