"""(a) A batch of 100,000 inputs accepted (202) versus a bulk INSERT of the same rows.

Result: wall time of POST /api/v1/loops/{loop}/runs with {"inputs": [100,000 items]} over real
HTTP to gunicorn on loopback, until the 202 arrives; the runs then exist, pending, and every one
of them is queued (checked after each request by decoding the django-q2 packages).
Anchor: in the same run, psycopg inserts 100,000 equivalent rows (runs_run's 32 columns, same
values, a primary key on id; no secondary index, no foreign key) into a scratch table with
executemany, one commit. Target: result <= 3 x executemany. For information: COPY into that
table, and executemany into a table with all of runs_run's indexes (LIKE ... INCLUDING ALL).

    .venv/bin/python bench/batch_accept.py [--count 100000] [--repeat 3]
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common


def make_inputs(count: int) -> list:
    return [{"name": f"person-{i}", "index": i, "tags": ["bench", "batch"]} for i in range(count)]


def anchor_rows(loop, inputs: list, now):
    from loops_project.ids import run_id

    for item in inputs:
        yield (
            run_id(), loop.organization_id, loop.pk, loop.active_version_id, "", "pending",
            "api_token", "live", None, None, json.dumps(item), None, "", "", "", "", None, now,
            None, None, None, 0, 1, 0, None, "bat_anchor", None, None, "", "", None, 0,
        )  # fmt: skip


def scratch_table(conn, indexes: bool) -> list[str]:
    """runs_run's columns; with its primary key only, or with all its indexes."""
    conn.execute("DROP TABLE IF EXISTS bench_scratch_run")
    if indexes:
        conn.execute("CREATE TABLE bench_scratch_run (LIKE runs_run INCLUDING ALL)")
    else:
        conn.execute("CREATE TABLE bench_scratch_run (LIKE runs_run INCLUDING DEFAULTS)")
        conn.execute("ALTER TABLE bench_scratch_run ADD PRIMARY KEY (id)")
    cols = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'runs_run' ORDER BY ordinal_position"
    ).fetchall()
    return [c[0] for c in cols]


COLUMNS = [
    "id", "organization_id", "loop_id", "version_id", "test_code", "status",
    "trigger_type", "mode", "triggered_by_user_id", "triggered_by_token_id", "input",
    "output", "error_message", "error_type", "error_step", "error_traceback", "pending",
    "created_at", "started_at", "completed_at", "duration_ms", "cpu_time_ms", "attempt",
    "total_steps", "restarted_from_id", "batch_id", "parent_step_id", "idempotency_key",
    "task_id", "execution_id", "lease_expires_at", "executions",
]  # fmt: skip


def timed_insert(conn, loop, inputs: list, *, indexes: bool, copy: bool) -> float:
    """Seconds to insert len(inputs) rows into a fresh scratch table, one commit."""
    from django.utils import timezone

    cols = scratch_table(conn, indexes)
    conn.commit()
    assert sorted(COLUMNS) == sorted(cols), f"runs_run columns changed: {cols}"
    names = ", ".join(COLUMNS)
    rows = list(anchor_rows(loop, inputs, timezone.now()))
    start = time.perf_counter()
    with conn.cursor() as cur:
        if copy:
            with cur.copy(f"COPY bench_scratch_run ({names}) FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
        else:
            marks = ", ".join(["%s"] * len(COLUMNS))
            sql = f"INSERT INTO bench_scratch_run ({names}) VALUES ({marks})"
            cur.executemany(sql, rows)
    conn.commit()
    elapsed = time.perf_counter() - start
    conn.execute("DROP TABLE bench_scratch_run")
    conn.commit()
    return elapsed


def measure_anchors(loop, inputs: list) -> dict[str, float]:
    import psycopg

    with psycopg.connect(common.psycopg_dsn()) as conn:
        return {
            "executemany": timed_insert(conn, loop, inputs, indexes=False, copy=False),
            "copy": timed_insert(conn, loop, inputs, indexes=False, copy=True),
            "executemany_indexed": timed_insert(conn, loop, inputs, indexes=True, copy=False),
        }


def queued_run_ids() -> set[str]:
    """Every run id named by a queued django-q2 package (decoded with django-q2's signing)."""
    from django_q.models import OrmQ
    from django_q.signing import SignedPackage

    ids: set[str] = set()
    for payload in OrmQ.objects.values_list("payload", flat=True).iterator():
        task = SignedPackage.loads(payload)
        arg = task["args"][0]
        ids.update(arg if isinstance(arg, list) else [arg])
    return ids


def clean(batch_ids: list[str]) -> None:
    from django.db import connection
    from django_q.models import OrmQ

    with connection.cursor() as cur:
        cur.execute("DELETE FROM runs_run WHERE batch_id = ANY(%s)", [batch_ids])
        cur.execute("DELETE FROM runs_batch WHERE id = ANY(%s)", [batch_ids])
    OrmQ.objects.all().delete()


def measure_accept(base: str, raw_token: str, loop, inputs: list) -> tuple[float, str, int]:
    import httpx

    from runs.models import Run, RunStatus

    body = json.dumps({"inputs": inputs}).encode()
    headers = {"Authorization": f"Bearer {raw_token}", "Content-Type": "application/json"}
    with httpx.Client(timeout=600) as client:
        start = time.perf_counter()
        response = client.post(f"{base}/api/v1/loops/{loop.slug}/runs", content=body,
                               headers=headers)  # fmt: skip
        elapsed = time.perf_counter() - start
    assert response.status_code == 202, (response.status_code, response.text[:500])
    data = response.json()["data"]
    batch_id = data["batchId"]
    assert data["count"] == len(inputs), data
    pending = Run.objects.filter(batch_id=batch_id, status=RunStatus.PENDING)
    run_ids = set(pending.values_list("pk", flat=True))
    assert len(run_ids) == len(inputs), f"{len(run_ids)} pending runs, expected {len(inputs)}"
    missing = run_ids - queued_run_ids()
    assert not missing, f"{len(missing)} runs of the batch are not queued"
    return elapsed, batch_id, len(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--database",
        default="loops_bench_batch",
        help="database name on BENCH_DATABASE_URL's server (default: one of its own, so that "
        "the 1,000,000 runs of runs_list.py are not in the table; give loops_bench to "
        "measure with them)",
    )
    args = parser.parse_args()

    common.setup(args.database)
    from runs.models import Run

    table_rows = Run.objects.count()
    from django_q.models import OrmQ

    OrmQ.objects.all().delete()
    _, loop, raw = common.seed("bench-batch")
    inputs = make_inputs(args.count)
    proc, base = common.start_gunicorn(workers=args.workers)
    accepts, anchors = [], []
    try:
        for i in range(args.repeat):
            elapsed, batch_id, size = measure_accept(base, raw, loop, inputs)
            clean([batch_id])
            anchor = measure_anchors(loop, inputs)
            accepts.append(elapsed)
            anchors.append(anchor)
            print(f"round {i + 1}: 202 in {elapsed:.2f} s ({size / 1e6:.1f} MB body); "
                  + "; ".join(f"{k} {v:.2f} s" for k, v in anchor.items()))  # fmt: skip
    finally:
        common.stop(proc)
    accept = common.median(accepts)
    em, cp, emi = (common.median([a[k] for a in anchors]) for k in anchors[0])
    ok = common.print_table(
        f"(a) batch accept, {args.count:,} inputs, median of {args.repeat}, {table_rows:,} runs "
        f"already in runs_run (PostgreSQL {args.database}, gunicorn)",
        [
            {
                "figure": "POST batch -> 202 (runs pending + queued)",
                "result": f"{accept:.2f} s",
                "anchor": f"executemany {em:.2f} s",
                "ratio": f"{accept / em:.2f}x",
                "target": "<= 3x",
                "ok": accept / em <= 3,
            },
            {
                "figure": "(info) vs COPY, same table",
                "result": f"{accept:.2f} s",
                "anchor": f"COPY {cp:.2f} s",
                "ratio": f"{accept / cp:.2f}x",
                "target": "-",
                "ok": True,
            },
            {
                "figure": "(info) vs executemany, all runs_run indexes",
                "result": f"{accept:.2f} s",
                "anchor": f"executemany {emi:.2f} s",
                "ratio": f"{accept / emi:.2f}x",
                "target": "-",
                "ok": True,
            },
        ],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
