"""Live mode: the API call that triggered a run waits, up to a timeout, for the run to end.

A live wait holds its web worker (a thread, or a whole process with synchronous workers) for
as long as it waits. So that one organization cannot hold them all, each organization may wait
live for at most LOOPS_LIVE_WAITS_PER_ORG runs at once; a trigger beyond that is answered at
once as if its timeout had passed (202, the run queued). On PostgreSQL the bound holds across
every web process: each wait holds one of the organization's slots, a session advisory lock
released when it ends (or with its connection, if the process dies). Elsewhere (SQLite, one
machine) it holds within each web process.
"""

import time

from django.conf import settings

from loops_project.slots import slot
from runs.models import Run

POLL_SECONDS = 0.05
LIVE_LOCK = 7_270_012  # the advisory locks' space of live waits' slots (loops_project.slots)


def wait_for_end(run: Run, timeout: float, runs=Run.objects) -> Run | None:
    """The run (read through `runs`) once it has ended, or None when the timeout passes
    first, or at once when its organization already waits live for as many runs as it may."""
    with slot(LIVE_LOCK, run.organization_id, settings.LOOPS_LIVE_WAITS_PER_ORG) as free:
        if not free:
            return None
        deadline = time.monotonic() + timeout
        delay = POLL_SECONDS
        while True:
            current = runs.get(pk=run.pk)
            if current.is_ended:
                return current
            if time.monotonic() >= deadline:
                return None
            time.sleep(min(delay, max(deadline - time.monotonic(), 0)))
            delay = min(delay * 1.5, 0.5)
