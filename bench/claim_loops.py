"""What many loops with runs waiting cost every claim of every organization.

Every claim of a run (runs.state.claim_next), and every round of the clock (state.may_start),
chooses the fairest run among the oldest pending run of each loop. Claims take turns (one at a
time, under an advisory lock), so the choice's cost bounds the claims of the whole platform.

In a database of its own (loops_bench_claims), one organization gets --loops loops (default
10, 100, 1,000, 3,000, grown in steps), each with one pending run and one running run; the
choice (state.may_start, the claim's statement without the claim) is timed --calls (20) times
at each size, p50 printed with its ratio to the smallest size, measured in the same run. With
LOOPS_MAX_LOOPS_PER_ORG (200), one organization reaches the 200 row at most.

    .venv/bin/python bench/claim_loops.py [--loops 10,100,1000,3000] [--calls 20]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

DATABASE = "loops_bench_claims"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", default="10,100,1000,3000")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    common.setup(DATABASE)
    from django.db import connection

    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from runs import dispatch, state
    from runs.models import Run, RunStatus

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Run._meta.db_table} CASCADE")
        cursor.execute(f"TRUNCATE {Loop._meta.db_table} CASCADE")
    org = Organization.objects.filter(slug="many").first() or organization_create(slug="many")
    print(f"the claim's choice, {args.calls} calls per size; each loop: 1 pending, 1 running run")
    print(f"{'loops':>6}  {'p50 ms':>8}  {'p95 ms':>8}  {'ratio':>6}")
    made, anchor = 0, None
    for size in (int(n) for n in args.loops.split(",")):
        loops = Loop.objects.bulk_create(
            Loop(organization=org, slug=f"loop-{n}", name=f"Loop {n}") for n in range(made, size)
        )
        made = size
        Run.objects.bulk_create(
            (
                Run(loop=loop, organization=org, status=status, queue=dispatch.queue_key())
                for loop in loops
                for status in (RunStatus.PENDING, RunStatus.RUNNING)
            ),
            batch_size=2000,
        )
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {Run._meta.db_table}")
        times = []
        for _ in range(args.calls):
            started = time.perf_counter()
            assert state.may_start()
            times.append((time.perf_counter() - started) * 1000)
        p50 = statistics.median(times)
        anchor = anchor or p50
        print(f"{size:>6,}  {p50:>8.2f}  {common.percentile(times, 95):>8.2f}  "
              f"{p50 / anchor:>5.1f}x", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
