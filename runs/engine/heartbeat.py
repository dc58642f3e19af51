"""A running execution's lease, renewed by a thread of its worker process.

A run's lease lasts LOOPS_LEASE_SECONDS and is renewed every LOOPS_HEARTBEAT_SECONDS while the
execution goes on, whatever the worker is busy with (a long step.http, a slow database): if the
worker dies, the lease runs out and the clock (runs.clock) puts the run back in the queue. The
thread runs in worker processes only (`enable`, called by the qcluster command); an execution
in any other process (a test, a command) keeps the lease its claim gave it.
"""

import threading
import time
from contextlib import contextmanager

from django.conf import settings
from django.db import DatabaseError, connection

from runs import state

_enabled = False


def enable() -> None:
    global _enabled
    _enabled = True


class Heartbeat:
    """One thread per worker process renews the lease of every execution in hand (one per
    lane, runs.engine.turns)."""

    def __init__(self) -> None:
        self.owners: set[state.Owner] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    @contextmanager
    def watching(self, owner: state.Owner):
        if not _enabled:
            yield
            return
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._beat, name="loops-heartbeat",
                                               daemon=True)  # fmt: skip
                self.thread.start()
            self.owners.add(owner)
        try:
            yield
        finally:
            with self.lock:
                self.owners.discard(owner)

    def _beat(self) -> None:
        while True:
            time.sleep(settings.LOOPS_HEARTBEAT_SECONDS)
            with self.lock:
                owners = list(self.owners)
            for owner in owners:
                try:
                    state.renew_lease(owner)
                except DatabaseError:
                    connection.close()  # a new connection next time


heartbeat = Heartbeat()
