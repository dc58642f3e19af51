"""A worker's turn: claim runs, fairest first, and execute them until none may start.

A worker process executes up to LOOPS_EXECUTIONS_PER_WORKER runs at once, one per lane. While
an execution's sandbox works, or the database commits, its worker thread only waits; a second
lane keeps the cores busy meanwhile. The turn's own thread is the first lane. The others are
threads of the worker process that live as long as it does, each with its own database
connection and its own zygote (runs.engine.zygote_client); they start in worker clusters
only (`enable_lanes`, called by the qcluster command), so a turn run by a test or a command
stays in its caller's thread and transaction. The other lanes are woken only once the turn has
claimed a run: an idle turn costs one claim.

Every lane stops taking runs when the turn's time is up (LOOPS_TURN_SECONDS: the turn is then
handed on, so that a task always ends well inside django-q2's timeout) or the cluster stops;
the turn ends when every lane has finished the run in hand. A lane whose sandbox cannot start
claims nothing (zygote_client.ready): the runs stay pending, for workers whose sandbox works.
"""

import ctypes
import logging
import multiprocessing
import os
import threading
import time

from django.conf import settings
from django.db import close_old_connections

from runs import dispatch, state
from runs.engine import executor, zygote_client

logger = logging.getLogger(__name__)

# Whether the worker cluster is stopping: shared memory made by `manage.py qcluster` before it
# forks its workers (no lock: a worker killed while reading it blocks no one). While it is set,
# turns take no more runs, so that a graceful stop waits for the runs in hand, not for turns.
_stopping = None
_lanes_enabled = False


def share_stop_flag():
    """Make the cluster's stop flag (in the qcluster process, before the cluster starts);
    setting its `value` ends every turn after the runs in hand."""
    global _stopping
    _stopping = multiprocessing.RawValue(ctypes.c_bool, False)
    return _stopping


def stopping() -> bool:
    return _stopping is not None and _stopping.value


def enable_lanes() -> None:
    """Let worker processes execute LOOPS_EXECUTIONS_PER_WORKER runs at once."""
    global _lanes_enabled
    _lanes_enabled = True


class Turn:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.open = True  # lanes may take runs
        self.timed_out = False

    def take(self, first: state.Claim | None = None) -> int:
        """Execute `first`, then claim and execute runs while the turn is open. Returns how
        many runs this lane executed."""
        done, claim = 0, first
        while True:
            if claim is None:
                if not self.open or stopping() or not zygote_client.ready():
                    return done
                claim = state.claim_next()
                if claim is None:
                    return done
            executor.execute(claim)
            claim = None
            done += 1
            if time.monotonic() >= self.deadline:
                self.timed_out = True
                return done


class Lanes:
    """The lanes of one worker process beyond the turn's own thread."""

    def __init__(self, count: int):
        self.changed = threading.Condition()
        self.turn: Turn | None = None
        self.busy = 0
        self.executed = 0
        self.pid = os.getpid()
        for number in range(2, count + 2):
            threading.Thread(target=self._lane, name=f"loops-lane-{number}", daemon=True).start()

    def work(self, turn: Turn) -> int:
        first = None if stopping() or not zygote_client.ready() else state.claim_next()
        if first is None:
            return 0
        with self.changed:
            self.turn, self.executed = turn, 0
            self.changed.notify_all()
        try:
            done = turn.take(first)
        finally:
            with self.changed:
                turn.open, self.turn = False, None
                while self.busy:
                    self.changed.wait()
        return done + self.executed

    def _lane(self) -> None:
        zygote_client.ready()
        served = None
        while True:
            with self.changed:
                while self.turn is None or self.turn is served:
                    self.changed.wait()
                turn = served = self.turn
                self.busy += 1
            done = 0
            try:
                close_old_connections()
                done = turn.take()
            except Exception:
                # Its run is taken up again when its lease runs out (runs.clock).
                logger.exception("A lane of worker %s failed", os.getpid())
            finally:
                with self.changed:
                    self.busy -= 1
                    self.executed += done
                    self.changed.notify_all()


_lanes: Lanes | None = None


def lanes() -> Lanes | None:
    """This worker process's other lanes (made on its first turn), or None where there are
    none."""
    global _lanes
    extra = settings.LOOPS_EXECUTIONS_PER_WORKER - 1
    if not _lanes_enabled or extra < 1:
        return None
    if _lanes is None or _lanes.pid != os.getpid():
        _lanes = Lanes(extra)
    return _lanes


def start_worker(**_) -> None:
    """A worker process of the cluster has started (django-q2's post_spawn, before it takes
    its first task): its lanes and every lane's zygote start now, not while it executes its
    first runs."""
    lanes()
    zygote_client.ready()


def work() -> int:
    """A turn to work. Returns how many runs it executed."""
    turn = Turn(settings.LOOPS_TURN_SECONDS)
    others = lanes()
    done = others.work(turn) if others is not None else turn.take()
    if turn.timed_out:
        dispatch.wake_workers()  # the turn is handed on
    return done
