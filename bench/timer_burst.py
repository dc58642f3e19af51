"""Another organization's timer beside a burst of one organization's timers.

A batch of runs that sleep until the same moment (`step.sleep_until`) makes a burst of timers
all due at once; each one that fires ends its step and queues its run again (about 8 ms of the
clock's time on these machines). In a database of its own (loops_bench_timers), one
organization ("burst") gets --burst (3,000) waiting runs whose timers are due a second ago,
another ("quiet") one waiting run whose timer is due just after the whole burst. Then the
clock's rounds run (runs.clock.round_, as `qcluster` runs them) until every timer has fired,
and the script prints when the quiet organization's run was woken, next to how long the whole
burst took to fire (same run). Target: the quiet run is woken within one batch's time (~1 s),
not after the burst.

    .venv/bin/python bench/timer_burst.py [--burst 3000]
"""

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

DATABASE = "loops_bench_timers"


def waiting_runs(slug: str, count: int, due) -> list[str]:
    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from loops_project import ids
    from runs import dispatch
    from runs.models import Run, RunStatus, Step, StepStatus, Timer, TimerKind

    org = Organization.objects.filter(slug=slug).first() or organization_create(slug=slug)
    loop = Loop.objects.filter(organization=org).first() or Loop.objects.create(
        organization=org, slug="sleeper", name="Sleeper"
    )
    runs = Run.objects.bulk_create(
        (Run(loop=loop, organization=org, status=RunStatus.WAITING, queue=dispatch.queue_key())
         for _ in range(count)), batch_size=2000,
    )  # fmt: skip
    steps = Step.objects.bulk_create(
        (Step(id=ids.step_id(), run=run, order=0, key="nap", name="Nap", kind="sleep",
              status=StepStatus.WAITING) for run in runs), batch_size=2000,
    )  # fmt: skip
    Timer.objects.bulk_create(
        (Timer(kind=TimerKind.STEP, target=step.pk, due_at=due, queue=dispatch.queue_key())
         for step in steps), batch_size=2000,
    )  # fmt: skip
    return [run.pk for run in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=3000)
    args = parser.parse_args()
    common.setup(DATABASE)
    from django.db import connection
    from django.utils import timezone

    from runs import clock
    from runs.models import Run, RunStatus, Timer

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Run._meta.db_table}, {Timer._meta.db_table} CASCADE")
    now = timezone.now()
    waiting_runs("burst", args.burst, now - timedelta(seconds=1))
    (quiet,) = waiting_runs("quiet", 1, now - timedelta(milliseconds=500))
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Timer._meta.db_table}")
    started, woken = time.perf_counter(), None
    while Timer.objects.exists():
        clock.round_()
        if woken is None and Run.objects.filter(pk=quiet, status=RunStatus.PENDING).exists():
            woken = time.perf_counter() - started
    drained = time.perf_counter() - started
    print(f"a burst of {args.burst:,} timers of one organization fired in {drained:.1f} s "
          f"({args.burst / drained:.0f}/s)")  # fmt: skip
    print(f"another organization's timer, due after the whole burst, fired after {woken:.2f} s "
          f"({woken / drained:.2f} of the burst's time)")  # fmt: skip


if __name__ == "__main__":
    main()
