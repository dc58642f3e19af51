"""The runs list's cost with large inputs: what the database computes for rows it sorts or skips.

The lists send each run's input and output as the head of its JSON text (runs.selectors:
without_values), computed by the database. In a database of its own (loops_bench_listbig),
one organization gets 300 runs with ~900 KB inputs; one page of one run is read sorted by
duration, and at offset 299, 5 times each: as one query (the heads computed for every row
sorted or skipped: how page_runs read before) and as page_runs reads now (the page's ids on
plain columns first, then the page's rows). p50 of each, same run.

    .venv/bin/python bench/runs_list_values.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

CASES = (("sort=durationMs", "durationMs", "duration_ms", 0),
         ("offset=299", "createdAt", "created_at", 299))  # fmt: skip


def main() -> None:
    common.setup("loops_bench_listbig")
    from django.db import connection

    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from runs.models import Run, RunStatus
    from runs.selectors import page_runs, without_values

    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {Run._meta.db_table} CASCADE")
    org = Organization.objects.filter(slug="big").first() or organization_create(slug="big")
    loop = Loop.objects.filter(organization=org).first() or Loop.objects.create(
        organization=org, slug="big", name="Big"
    )
    big = {"blob": ["x" * 1000 for _ in range(900)]}
    for _ in range(10):
        Run.objects.bulk_create(
            Run(loop=loop, organization=org, status=RunStatus.SUCCEEDED, input=big, duration_ms=n)
            for n in range(30)
        )
    runs = without_values(Run.objects.filter(organization=org))
    for label, sort, field, offset in CASES:
        ways = (
            (
                "one query (before)",
                lambda f=field, o=offset: list(runs.order_by(f, "pk")[o : o + 2]),
            ),
            (
                "ids first (after)",
                lambda s=sort, o=offset: page_runs(runs, sort=s, limit=1, offset=o),
            ),
        )
        for name, read in ways:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                read()
                times.append(time.perf_counter() - started)
            print(f"{label:16} {name:20} p50 {1000 * statistics.median(times):8.1f} ms")


if __name__ == "__main__":
    main()
