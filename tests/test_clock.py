"""The clock on many machines at once: every due timer fires once, whichever clock takes it.

Two clocks (threads with connections of their own, as two worker clusters would have) fire the
same due timers at the same moment; row locks (SKIP LOCKED on PostgreSQL, one writer at a time
on SQLite) give each timer to one of them. A clock of another queue (staging on the same
database) fires none of them."""

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from loops.models import Schedule
from loops.schedules import fire_due_schedules, schedule_create
from loops_project import ids
from runs import dispatch
from runs.clock import BATCH, fire_due_timers, next_due, round_
from runs.models import Run, RunStatus, Step, StepStatus, Timer, TimerKind
from tests.factories import LoopFactory, RunFactory

pytestmark = pytest.mark.django_db(transaction=True)

SLEEPERS = 250  # more than one round of the clock (runs.clock.BATCH)


def _sleeping_runs(org, n: int, due) -> list[str]:
    loop = LoopFactory(organization=org)
    runs = []
    for _ in range(n):
        run = RunFactory(loop=loop, status=RunStatus.WAITING)
        nap = Step.objects.create(
            id=ids.step_id(), run=run, order=0, key="nap", name="Nap", kind="sleep",
            status=StepStatus.WAITING,
        )  # fmt: skip
        dispatch.set_timer(TimerKind.STEP, nap.pk, due)
        runs.append(run.pk)
    return runs


def test_two_clocks_fire_each_due_timer_once(org):
    # Due tomorrow, fired as if it were the day after: a worker cluster of the test session,
    # if one runs, is not a third clock for them.
    due = timezone.now() + timedelta(days=1)
    runs = _sleeping_runs(org, SLEEPERS, due)
    start = threading.Barrier(2)
    fired: list[int] = []
    errors: list[BaseException] = []

    def clock():
        try:
            start.wait()
            fired.append(fire_due_timers(due + timedelta(days=1)))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    clocks = [threading.Thread(target=clock) for _ in range(2)]
    for thread in clocks:
        thread.start()
    for thread in clocks:
        thread.join(timeout=120)
    assert not errors, errors
    assert sum(fired) == SLEEPERS  # none fired by both clocks, none missed
    assert not Timer.objects.exists()
    assert Run.objects.filter(pk__in=runs, status=RunStatus.PENDING).count() == SLEEPERS
    assert Step.objects.filter(run__in=runs, status=StepStatus.SUCCEEDED).count() == SLEEPERS


def test_a_clock_fires_only_the_timers_and_schedules_of_its_own_queue(org, loop, monkeypatch):
    """Production and staging clusters on one database: staging's clock ends none of
    production's sleeps and starts none of its schedules; production's does, and the
    scheduled run is queued for production's workers."""
    due = timezone.now() + timedelta(days=1)
    later = due + timedelta(days=1)
    monkeypatch.setattr(dispatch, "queue_key", lambda: "production")
    (sleeper,) = _sleeping_runs(org, 1, due)
    schedule = schedule_create(loop=loop, cron="0 9 * * *")
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=due)

    monkeypatch.setattr(dispatch, "queue_key", lambda: "staging")
    assert next_due(timezone.now()) is None  # nothing to wake staging's clock for
    assert (fire_due_timers(later), fire_due_schedules(later)) == (0, 0)
    assert Run.objects.get(pk=sleeper).status == RunStatus.WAITING
    assert not Run.objects.filter(loop=loop).exists()

    monkeypatch.setattr(dispatch, "queue_key", lambda: "production")
    assert next_due(timezone.now()) > 0
    assert (fire_due_timers(later), fire_due_schedules(later)) == (1, 1)
    assert Run.objects.get(pk=sleeper).status == RunStatus.PENDING
    assert Run.objects.get(loop=loop).queue == "production"


def test_a_rounds_schedules_take_one_tick_and_hold_no_timer_back(org, other_org, settings):
    """An organization's schedules all due at the top of the minute are fired over as many
    rounds as they take, the next round at once; another organization's timer is fired by the
    first round and waits for none of them."""
    settings.LOOPS_CLOCK_SECONDS = 0  # the shortest tick: one schedule a round
    busy = LoopFactory(organization=org)
    for _ in range(3):
        schedule_create(loop=busy, cron="* * * * *")
    due = timezone.now() - timedelta(seconds=1)
    Schedule.objects.update(next_run_at=due)
    (sleeper,) = _sleeping_runs(other_org, 1, due)

    round_()
    assert Run.objects.get(pk=sleeper).status == RunStatus.PENDING
    assert Run.objects.filter(loop=busy).count() == 1
    assert next_due(timezone.now()) <= 0  # the next round follows at once
    round_()
    round_()
    assert Run.objects.filter(loop=busy).count() == 3
    assert next_due(timezone.now()) > 0


def test_a_burst_of_one_organizations_timers_holds_back_no_others(org, other_org):
    """Timers fire in fair turns: another organization's timer, due after the whole burst,
    fires in the first batch; the burst goes on in the batches after."""
    now = timezone.now()
    burst = _sleeping_runs(org, 2 * BATCH + 50, now - timedelta(seconds=2))
    (theirs,) = _sleeping_runs(other_org, 1, now - timedelta(seconds=1))

    assert fire_due_timers(now, seconds=0) == BATCH  # one batch, as a round with no time left
    assert Run.objects.get(pk=theirs).status == RunStatus.PENDING
    woken = Run.objects.filter(pk__in=burst, status=RunStatus.PENDING).count()
    assert woken == BATCH - 1
    assert fire_due_timers(now) == 2 * BATCH + 50 - woken  # the rest
    assert not Run.objects.filter(pk__in=burst, status=RunStatus.WAITING).exists()
