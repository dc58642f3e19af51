"""Slots: at most N of one organization's things at once, for what holds a web worker or its
CPU (live waits, compiling a program).

On PostgreSQL a slot is a session advisory lock (`space`, a hash of the organization and the
slot's number), so the bound holds across every web process and a process that dies releases
its slots with its connection. Elsewhere (SQLite, one machine) it holds within each process.
"""

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection

_TRY = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_RELEASE = "SELECT pg_advisory_unlock(%s, hashtext(%s))"

_held: Counter = Counter()  # this process's slots by (space, organization), not PostgreSQL
_held_lock = threading.Lock()


@contextmanager
def slot(space: int, organization_id: str, slots: int) -> Iterator[bool]:
    """Whether one of the organization's `slots` slots of `space` was free; held until the
    block ends."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            for number in range(slots):
                key = f"{organization_id}:{number}"
                cursor.execute(_TRY, [space, key])
                if cursor.fetchone()[0]:
                    try:
                        yield True
                    finally:
                        cursor.execute(_RELEASE, [space, key])
                    return
        yield False
        return
    with _held_lock:
        free = _held[space, organization_id] < slots
        if free:
            _held[space, organization_id] += 1
    try:
        yield free
    finally:
        if free:
            with _held_lock:
                _held[space, organization_id] -= 1
