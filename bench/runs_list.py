"""(c) GET /api/v1/runs p95 with 1,000,000 runs in the table.

Seeds (once; --reseed to redo) 1,000,000 runs of one organization with COPY: 8 loops, statuses
mixed as in production (most succeeded, 4% failed, some pending/running/waiting/cancelled), created
over 180 days, ids time-sortable like the app's. ANALYZE. Then, over real HTTP to gunicorn on
loopback, one client, --requests requests per case (after 10 warm-up requests), p50 and p95 of:
  - default page             GET /api/v1/runs
  - status filter            GET /api/v1/runs?status=failed
  - deep cursor page         GET /api/v1/runs?cursor=<cursor at position 50,000> (page 5,001 of 10)
  - loop filter              GET /api/v1/runs?loop=<slug>
  - (info) deep offset page  GET /api/v1/runs?offset=50000
Anchor, same run and stack: GET /api/v1/runs/{id} of one run (a primary-key read with its steps).
Target: p95 <= 50 ms for each of the four cases. With --explain (default) the SQL of each case is
captured in-process and its EXPLAIN ANALYZE plan printed.

    .venv/bin/python bench/runs_list.py [--runs 1000000] [--requests 200] [--reseed]
"""

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

ORG = "bench-list"
LOOPS = 8
STATUSES = [("succeeded", 80), ("failed", 4), ("pending", 3), ("running", 2), ("waiting", 6),
            ("cancelled", 5)]  # fmt: skip
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
DEEP_POSITION = 50_000


def ulid_at(ms: int, rng: random.Random) -> str:
    """A lower-case ULID for a time in ms (as loops_project.ids makes them), fast."""
    value = (ms << 80) | rng.getrandbits(80)
    chars = []
    for _ in range(26):
        chars.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def seed_runs(org, count: int) -> None:
    import psycopg

    from loops.demo import GREETING_CODE
    from loops.models import Loop
    from loops.services import loop_create

    loops = []
    for n in range(LOOPS):
        slug = f"loop-{n}"
        loop = Loop.objects.filter(organization=org, slug=slug).first() or loop_create(
            organization=org, slug=slug, name=slug, code=GREETING_CODE
        )
        loops.append(Loop.objects.get(pk=loop.pk))
    rng = random.Random(42)
    statuses = [s for s, weight in STATUSES for _ in range(weight)]
    end = datetime.now(UTC) - timedelta(minutes=5)
    start = end - timedelta(days=180)
    step_ms = (end - start).total_seconds() * 1000 / count
    start_ms = int(start.timestamp() * 1000)
    columns = (
        "id, organization_id, loop_id, version_id, test_code, status, trigger_type, mode, input, "
        "output, error_message, error_type, error_step, error_traceback, created_at, started_at, "
        "completed_at, duration_ms, cpu_time_ms, attempt, total_steps, task_id, execution_id, "
        "executions"
    )
    t0 = time.perf_counter()
    with psycopg.connect(common.psycopg_dsn()) as conn:
        conn.execute("DELETE FROM runs_run WHERE organization_id = %s", [org.pk])
        # Seeding only: the rows are valid, skip the per-row foreign-key triggers.
        conn.execute("SET session_replication_role = replica")
        with conn.cursor() as cur, cur.copy(f"COPY runs_run ({columns}) FROM STDIN") as copy:
            for i in range(count):
                ms = start_ms + int(i * step_ms)
                created = datetime.fromtimestamp(ms / 1000, UTC)
                status = statuses[rng.randrange(len(statuses))]
                loop = loops[(i * 7 + rng.randrange(3)) % LOOPS]
                ended = status in ("succeeded", "failed", "cancelled")
                duration = rng.randrange(20, 5000)
                copy.write_row((
                    f"run_{ulid_at(ms, rng)}", org.pk, loop.pk, loop.active_version_id, "", status,
                    "api_token" if i % 3 else "system", "live", f'{{"name": "n{i}"}}',
                    '{"greeting": "Hello"}' if status == "succeeded" else None,
                    "Step 'Fetch' failed: boom" if status == "failed" else "",
                    "RuntimeError" if status == "failed" else "", "", "", created,
                    None if status == "pending" else created,
                    created + timedelta(milliseconds=duration) if ended else None,
                    duration if ended else None, duration // 3, 1, 1, "", "", 1,
                ))  # fmt: skip
        conn.commit()
        conn.execute("ANALYZE runs_run")
        conn.commit()
    print(f"seeded {count:,} runs in {time.perf_counter() - t0:.0f} s")


def deep_cursor(org, raw_token: str, position: int) -> str:
    """A nextCursor the API gives out at an old position, through the API itself: the page
    of one run created before the run at `position` continues after it."""
    from django.db import connection
    from django.test import Client

    with connection.cursor() as cur:
        cur.execute(
            "SELECT created_at FROM runs_run WHERE organization_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            [org.pk, position - 2],
        )
        (created_at,) = cur.fetchone()
    response = Client().get(
        "/api/v1/runs",
        {"createdBefore": created_at.isoformat(), "limit": 1},
        HTTP_AUTHORIZATION=f"Bearer {raw_token}",
    )
    assert response.status_code == 200, response.content[:300]
    return response.json()["nextCursor"]


def timed(client, url: str, count: int) -> list[float]:
    for _ in range(10):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(count):
        start = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    return times


def explain(raw_token: str, path: str) -> str:
    """The runs_run SELECT the API runs for `path`, with its EXPLAIN ANALYZE plan."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as ctx:
        response = Client().get(path, HTTP_AUTHORIZATION=f"Bearer {raw_token}")
    assert response.status_code == 200, response.content[:300]
    sql = [q["sql"] for q in ctx.captured_queries if 'FROM "runs_run"' in q["sql"]][-1]
    with connection.cursor() as cur:
        cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
        plan = "\n".join(f"    {row[0]}" for row in cur.fetchall())
    return f"  SQL: {sql}\n{plan}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--no-explain", action="store_true")
    args = parser.parse_args()

    common.setup()
    import httpx

    from runs.models import Run

    org, _, raw = common.seed(ORG, loop_slug="loop-0")
    have = Run.objects.filter(organization=org).count()
    if args.reseed or have != args.runs:
        seed_runs(org, args.runs)
    total = Run.objects.count()
    print(f"runs in the table: {total:,} ({args.runs:,} in org {ORG})")
    deep = min(DEEP_POSITION, args.runs // 2)
    failed = Run.objects.filter(organization=org, status="failed").order_by("-created_at").first()
    cases = [
        ("default page", "/api/v1/runs"),
        ("status=failed", "/api/v1/runs?status=failed"),
        (f"deep cursor (position {deep:,})", f"/api/v1/runs?cursor={deep_cursor(org, raw, deep)}"),
        ("loop=<slug>", "/api/v1/runs?loop=loop-3"),
    ]
    info = [(f"(info) offset={deep}", f"/api/v1/runs?offset={deep}")]
    anchor_path = f"/api/v1/runs/{failed.pk}"

    proc, base = common.start_gunicorn(workers=2)
    results = {}
    try:
        headers = {"Authorization": f"Bearer {raw}"}
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            anchor = timed(client, anchor_path, args.requests)
            for name, path in cases + info:
                results[name] = timed(client, path, args.requests)
    finally:
        common.stop(proc)

    a95 = common.percentile(anchor, 95)
    rows = []
    for name, _ in cases + info:
        times = results[name]
        p50, p95 = common.percentile(times, 50), common.percentile(times, 95)
        is_info = name.startswith("(info)")
        rows.append({
            "figure": f"GET runs {name}",
            "result": f"p50 {p50:.1f} / p95 {p95:.1f} ms",
            "anchor": f"GET run by id p95 {a95:.1f} ms",
            "ratio": f"{p95 / a95:.2f}x",
            "target": "-" if is_info else "p95 <= 50 ms",
            "ok": True if is_info else p95 <= 50,
        })  # fmt: skip
    ok = common.print_table(
        f"(c) runs list, {total:,} runs in the table, {args.requests} requests per case, "
        "real HTTP to gunicorn (PostgreSQL)",
        rows,
    )
    if not args.no_explain:
        for name, path in cases + info:
            print(f"\n{name}: {path}")
            print(explain(raw, path))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
