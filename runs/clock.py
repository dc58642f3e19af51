"""The clock of a worker cluster: what is due now happens now, within a second.

It runs in the `qcluster` process (runs/management/commands/qcluster.py), beside django-q2's
workers, and on every machine that runs one; each round claims its work with row locks
(SKIP LOCKED on PostgreSQL; SQLite serializes writers), so no timer fires twice. Timers and
schedules are those of its cluster's queue (LOOPS_QUEUE), as runs are: a cluster of another
queue on the same database (staging) never fires them. Each round:

- timers that are due fire (a sleep ends, a wait times out, a wait for a person is reminded
  or escalated);
- cron schedules that are due start their runs;
- runs whose worker died (lease expired) go back to the queue;
- if runs may start and no turn is queued for them, a turn is (runs.dispatch);
- every few seconds, a bulk job whose task was lost gets another (runs.bulk);
- once an hour, audit log entries past their retention are deleted.

After each round, the cluster's webhook senders get the deliveries that are due (runs.senders).
Between rounds it sleeps LOOPS_CLOCK_SECONDS at most, less when a timer is due sooner.
"""

import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import cache

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone

from accounts.audit_log import prune_audit
from loops.models import Schedule
from loops.schedules import fire_due_schedules
from loops_project import sql
from runs import approvals, dispatch, reactions, state
from runs.bulk import bulk_revive_stalled
from runs.models import Run, RunStatus, Step, Timer, TimerKind
from runs.senders import Senders

logger = logging.getLogger(__name__)
BATCH = 100
PRUNE_EVERY_SECONDS = 3600
REVIVE_EVERY_SECONDS = 10
_pruned_at = [0.0]  # this process's last prune (time.monotonic())
_revived_at = [0.0]  # and its last look for stalled bulk jobs


def fire_due_timers(now: datetime | None = None, seconds: float | None = None) -> int:
    """Fire the timers of this cluster's queue due at `now`, BATCH at a time, in fair turns
    between organizations (each one's longest due first, `_fair_due`): a burst of one
    organization's timers (a batch of runs that sleep until the same moment) does not hold
    back another's. Returns how many fired. With `seconds`, it stops after the batch that
    spends that time (the clock's round: the rest fire in the next one, at once)."""
    now = now or timezone.now()
    until = None if seconds is None else time.monotonic() + seconds
    fired = 0
    while True:
        picked = _fair_due(now)
        with transaction.atomic():
            due = list(
                Timer.objects.select_for_update(skip_locked=True)
                .filter(pk__in=picked, due_at__lte=now)
                .order_by("due_at")
            )
            for timer in due:
                _fire(timer)
            Timer.objects.filter(pk__in=[t.pk for t in due]).delete()
        fired += len(due)
        # Done when no more are due, when another clock holds these (it fires the rest too),
        # or when the round's time is spent.
        if len(picked) < BATCH or not due or (until is not None and time.monotonic() >= until):
            return fired


def _fair_due(now: datetime) -> list[int]:
    """Up to BATCH due timers of this queue: each organization's first, then each one's
    second, and so on, oldest first at each rank. Not locked (the caller locks them)."""
    with connection.cursor() as cursor:
        cursor.execute(_fair_due_sql(), [dispatch.queue_key(), now, BATCH])
        return [pk for (pk,) in cursor.fetchall()]


@cache
def _fair_due_sql() -> str:
    t, s, r = sql.table(Timer), sql.table(Step), sql.table(Run)
    tc = lambda name: sql.column(Timer, name)  # noqa: E731
    # A timer's target is its step (TimerKind.STEP, APPROVAL); the step's run has the
    # organization. Table and column names from the models; every value is a parameter.
    return (
        f"SELECT id FROM (SELECT t.{tc('id')} AS id, t.{tc('due_at')} AS due_at, "  # noqa: S608
        f"row_number() OVER (PARTITION BY r.{sql.column(Run, 'organization')} "
        f"ORDER BY t.{tc('due_at')}, t.{tc('id')}) AS nth FROM {t} t "
        f"LEFT JOIN {s} s ON s.{sql.column(Step, 'id')} = t.{tc('target')} "
        f"LEFT JOIN {r} r ON r.{sql.column(Run, 'id')} = s.{sql.column(Step, 'run')} "
        f"WHERE t.{tc('queue')} = %s AND t.{tc('due_at')} <= %s) due "
        "ORDER BY nth, due_at, id LIMIT %s"
    )


def _fire(timer: Timer) -> None:
    """One timer, in a savepoint of its own: one that fails is logged and dropped, not fired
    again and again."""
    try:
        with transaction.atomic():
            if timer.kind == TimerKind.STEP:
                reactions.after(state.step_time_up(timer.target))
            elif timer.kind == TimerKind.APPROVAL:
                approvals.approval_timer_fire(timer.target)
    except DatabaseError:
        logger.exception("timer %s failed", timer)


def next_due(now: datetime) -> float | None:
    """Seconds until the next timer or schedule is due, if one is (a schedule left over from
    a round that ran out of time is due already)."""
    timers = Timer.objects.filter(queue=dispatch.queue_key())
    due_at = [timers.order_by("due_at").values_list("due_at", flat=True).first()]
    schedules = Schedule.objects.filter(queue=dispatch.queue_key(), enabled=True)
    due_at.append(schedules.order_by("next_run_at").values_list("next_run_at", flat=True).first())
    due_at = [when for when in due_at if when is not None]
    return (min(due_at) - now).total_seconds() if due_at else None


def round_(now: datetime | None = None) -> float:
    """One round of the clock; returns how long to sleep before the next."""
    now = now or timezone.now()
    # Timers, then schedules, take at most about one tick each (at least one batch, one
    # schedule): what is left is due at once, so the next round follows without a sleep.
    fire_due_timers(now, seconds=settings.LOOPS_CLOCK_SECONDS)
    fire_due_schedules(now, seconds=settings.LOOPS_CLOCK_SECONDS)
    for change in state.release_expired():
        if change.status == RunStatus.FAILED:
            logger.error("run %s: its worker died for the last time (LOOPS_MAX_LOST_EXECUTIONS); "
                         "failed", change.run_id)  # fmt: skip
        else:
            logger.warning("run %s: its worker died; queued again", change.run_id)
        reactions.after(change)
    if state.may_start():
        dispatch.wake_workers()
    if time.monotonic() - _revived_at[0] >= REVIVE_EVERY_SECONDS:
        _revived_at[0] = time.monotonic()
        bulk_revive_stalled()
    if time.monotonic() - _pruned_at[0] >= PRUNE_EVERY_SECONDS:
        _pruned_at[0] = time.monotonic()
        prune_audit(now)
    wait = settings.LOOPS_CLOCK_SECONDS
    soonest = next_due(timezone.now())
    return max(0.0, min(wait, soonest)) if soonest is not None else wait


def run(until: Callable[[], bool]) -> None:
    """Rounds until `until()` says stop, each also handing the webhook senders what is due
    (runs.senders). A database error ends a round, not the clock."""
    senders = Senders(settings.LOOPS_WEBHOOK_SENDERS)
    try:
        while not until():
            try:
                pause = round_()
                senders.round()
            except DatabaseError:
                logger.exception("clock round failed")
                pause = settings.LOOPS_CLOCK_SECONDS
            finally:
                close_old_connections()
            time.sleep(pause)
    finally:
        senders.stop()
