"""Helpers for engine tests: deploy a program, trigger it, execute it in this process.

`execute` runs the same code path as the django-q2 task (claim, sandbox, record), so the
program really runs in the sandbox; only the queue is skipped.
"""

import textwrap

from loops.services import loop_create
from runs.engine.executor import execute_run
from runs.models import Run, TriggerType
from runs.services import run_trigger


def program(body: str, imports: str = "") -> str:
    """A loop program whose run() has the given body."""
    return (
        textwrap.dedent(imports)
        + "\nclass TestLoop(Loop):\n    def run(self, event, step):\n"
        + textwrap.indent(textwrap.dedent(body), " " * 8)
    )


def deploy(org, code: str, slug: str = "subject"):
    return loop_create(organization=org, slug=slug, name=slug, code=code)


def trigger(loop, input=None) -> Run:
    return run_trigger(
        loop=loop, input=input if input is not None else {}, trigger_type=TriggerType.USER
    )


def execute(run: Run) -> Run:
    execute_run(run.pk)
    run.refresh_from_db()
    return run


def run_program(org, body: str, input=None, imports: str = "", slug: str = "subject") -> Run:
    loop = deploy(org, program(body, imports), slug=slug)
    return execute(trigger(loop, input))
