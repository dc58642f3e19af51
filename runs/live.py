"""Live mode: the API call that triggered a run waits, up to a timeout, for the run to end.

A live wait holds its web worker (a thread, or a whole process with synchronous workers) for
as long as it waits. So that one organization cannot hold them all, each organization may wait
live for at most LOOPS_LIVE_WAITS_PER_ORG runs at once; a trigger beyond that is answered at
once as if its timeout had passed (202, the run queued). On PostgreSQL the bound holds across
every web process: each wait holds one of the organization's slots, a session advisory lock
released when it ends (or with its connection, if the process dies). Elsewhere (SQLite, one
machine) it holds within each web process.
"""

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.db import connection

from runs.models import Run

POLL_SECONDS = 0.05
LIVE_LOCK = 7_270_012  # pg_try_advisory_lock(LIVE_LOCK, slot): a live wait's slot
_TRY = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_RELEASE = "SELECT pg_advisory_unlock(%s, hashtext(%s))"

_waiting: Counter = Counter()  # this process's live waits by organization (not PostgreSQL)
_waiting_lock = threading.Lock()


@contextmanager
def slot(organization_id: str) -> Iterator[bool]:
    """Whether a slot of the organization's live waits was free; held until the block ends."""
    slots = settings.LOOPS_LIVE_WAITS_PER_ORG
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for number in range(slots):
                key = f"{organization_id}:{number}"
                cursor.execute(_TRY, [LIVE_LOCK, key])
                if cursor.fetchone()[0]:
                    try:
                        yield True
                    finally:
                        cursor.execute(_RELEASE, [LIVE_LOCK, key])
                    return
        yield False
        return
    with _waiting_lock:
        free = _waiting[organization_id] < slots
        if free:
            _waiting[organization_id] += 1
    try:
        yield free
    finally:
        if free:
            with _waiting_lock:
                _waiting[organization_id] -= 1


def wait_for_end(run: Run, timeout: float, runs=Run.objects) -> Run | None:
    """The run (read through `runs`) once it has ended, or None when the timeout passes
    first, or at once when its organization already waits live for as many runs as it may."""
    with slot(run.organization_id) as free:
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
