"""django-q2 task entry points: they take ids (or nothing) and call the engine or a service."""

import ctypes
import multiprocessing
import time

from django.conf import settings

from runs import bulk, dispatch, state, webhooks
from runs.engine import executor

# Whether the worker cluster is stopping: shared memory made by `manage.py qcluster` before it
# forks its workers (no lock: a worker killed while reading it blocks no one). While it is set,
# turns take no more runs, so that a graceful stop waits for the runs in hand, not for turns.
_stopping = None


def share_stop_flag():
    """Make the cluster's stop flag (in the qcluster process, before the cluster starts);
    setting its `value` ends every turn after the run in hand."""
    global _stopping
    _stopping = multiprocessing.RawValue(ctypes.c_bool, False)
    return _stopping


def stopping() -> bool:
    return _stopping is not None and _stopping.value


def work() -> int:
    """A turn to work: claim runs, fairest first, and execute them one after the other until
    none may start or the cluster stops. After LOOPS_TURN_SECONDS the turn is handed on (a new
    turn queued), so that a task always ends well inside django-q2's timeout. Returns how many
    runs it executed."""
    deadline = time.monotonic() + settings.LOOPS_TURN_SECONDS
    done = 0
    while not stopping() and (claim := state.claim_next()) is not None:
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


def bulk_work(job_id: str, token: str) -> None:
    """Work on a bulk job for a few seconds (runs.bulk), then hand on to a new task."""
    bulk.bulk_job_work(job_id=job_id, token=token)
