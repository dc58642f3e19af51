"""Helpers for engine tests: deploy a program, trigger it, execute it in this process.

`execute` runs the same code path as the django-q2 task (claim, sandbox, record), so the
program really runs in the sandbox; only the queue is skipped.
"""

import os
import shutil
import textwrap

import pytest
from django.db import transaction
from django.test import TestCase
from django.utils import timezone

from loops.services import loop_create
from runs.clock import fire_due_timers
from runs.engine.executor import execute_run
from runs.models import Run, Step, Timer, TriggerType
from runs.services import run_trigger

# Tests of bubblewrap itself skip on a machine without it; in CI it is installed and they never
# skip (a missing bwrap fails them there).
needs_bwrap = pytest.mark.skipif(
    shutil.which("bwrap") is None and not os.environ.get("CI"),
    reason="bubblewrap is not installed (apt-get install bubblewrap)",
)


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
    # What follows the execution (a parent carries on, webhooks) happens after commit: run it
    # at the end, as if the test's transaction had committed.
    with TestCase.captureOnCommitCallbacks(execute=True):
        execute_run(run.pk)
    run.refresh_from_db()
    return run


def run_program(org, body: str, input=None, imports: str = "", slug: str = "subject") -> Run:
    loop = deploy(org, program(body, imports), slug=slug)
    return execute(trigger(loop, input))


def fire_timer_of(step) -> int:
    """Make the step's timer due now and let the clock fire what is due (runs.clock), in one
    transaction: until it commits, no other clock (the session's worker cluster, which sees
    committed data) can see the timer due or take its row."""
    with transaction.atomic():
        now = timezone.now()
        Step.objects.filter(pk=step.pk).update(wake_at=now)
        Timer.objects.filter(target=step.pk).update(due_at=now)
        return fire_due_timers(now)
