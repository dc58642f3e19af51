"""django-q2 task entry points: they take ids (or nothing) and call the engine or a service."""

import time

from django.conf import settings

from runs import dispatch, state, webhooks
from runs.engine import executor


def work() -> int:
    """A turn to work: claim runs, fairest first, and execute them one after the other until
    none may start. After LOOPS_TURN_SECONDS the turn is handed on (a new turn queued), so
    that a task always ends well inside django-q2's timeout. Returns how many runs it
    executed."""
    deadline = time.monotonic() + settings.LOOPS_TURN_SECONDS
    done = 0
    while (claim := state.claim_next()) is not None:
        executor.execute(claim)
        done += 1
        if time.monotonic() >= deadline:
            dispatch.wake_workers()
            break
    return done


def execute_run(run_id: str) -> str:
    """One run by its id (a task queued by an earlier version of Loops, or by hand)."""
    return executor.execute_run(run_id)


def deliver_webhook(delivery_id: str) -> str:
    return webhooks.deliver(delivery_id)
