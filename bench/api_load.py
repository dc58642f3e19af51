"""(b) Async trigger throughput and p99 latency under gunicorn, load generator on loopback.

Result: wrk (C, `apt-get install -y wrk`) posts a small JSON body to the trigger URL
POST /api/loop/{org}/{loop} with a bearer token, for --duration seconds on --connections
connections (sync workers close each after its answer), against `gunicorn loops_project.wsgi -w 4` on 127.0.0.1 using the bench
database. No worker drains the queue: each 202 means a pending run saved and its django-q2 task
queued (checked afterwards: runs created >= requests counted, every answer a 202).
Anchors, same run, same server and load generator:
  - the same POST without a token (401 from the API's auth): the web stack with no database work,
    the ceiling the trigger path can reach on this machine;
  - psycopg, one connection: INSERT + COMMIT per second (a trigger is one commit: run and task).
Target: >= 500 requests/s and p99 <= 50 ms. For information, the same load through the API's
operation (`?mode=async` takes it there instead of runs/trigger_statement.py).

    .venv/bin/python bench/api_load.py [--duration 15] [--connections 8] [--workers 4]
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

LUA = """
wrk.method = "POST"
wrk.body = '{"name": "load", "source": "bench"}'
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  io.write(string.format(
    "RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"non2xx\\": %%d, " ..
    "\\"socket_errors\\": %%d, \\"p50_us\\": %%d, \\"p95_us\\": %%d, \\"p99_us\\": %%d, " ..
    "\\"max_us\\": %%d}\\n",
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, token: str | None, duration: int, connections: int, threads: int) -> dict:
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA % {"auth": auth})
        script = f.name
    cmd = [
        "wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
        "--timeout", "10s", "-s", script, url,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60)
    Path(script).unlink()
    match = re.search(r"^RESULT (.*)$", out.stdout, re.MULTILINE)
    assert match, out.stdout + out.stderr
    result = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def insert_commit_rate(seconds: float = 3.0) -> float:
    """Single-row INSERT + COMMIT per second over TCP, one connection (the physical anchor)."""
    import psycopg

    with psycopg.connect(common.psycopg_dsn()) as conn:
        conn.execute("CREATE TEMP TABLE bench_commit (id bigserial primary key, body jsonb)")
        conn.commit()
        count, deadline = 0, time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            conn.execute("INSERT INTO bench_commit (body) VALUES (%s)", ['{"name": "load"}'])
            conn.commit()
            count += 1
        return count / (time.perf_counter() - start)


def clean(org) -> None:
    from django.db import connection
    from django_q.models import OrmQ

    with connection.cursor() as cur:
        cur.execute("DELETE FROM runs_run WHERE organization_id = %s", [org.pk])
    OrmQ.objects.all().delete()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2

    common.setup()
    from runs.models import Run

    org, loop, raw = common.seed("bench-api")
    clean(org)
    proc, base = common.start_gunicorn(workers=args.workers)
    url = f"{base}/api/loop/{org.slug}/{loop.slug}"
    try:
        run_wrk(url, raw, 3, args.connections, args.threads)  # warm-up: connections, imports
        clean(org)
        anchor = run_wrk(url, None, args.duration, args.connections, args.threads)
        result = run_wrk(url, raw, args.duration, args.connections, args.threads)
        created = Run.objects.filter(organization=org).count()
        from django_q.models import OrmQ

        queued = OrmQ.objects.count()
        clean(org)
        # For information: the same trigger through the API's operation (a query string
        # takes it there), i.e. without runs/trigger_statement.py.
        operation = run_wrk(f"{url}?mode=async", raw, args.duration, args.connections, args.threads)
    finally:
        common.stop(proc)
    commit_rate = insert_commit_rate()
    clean(org)
    print(f"trigger: {result}")
    print(f"trigger through the API's operation: {operation}")
    print(f"anchor (401, no database): {anchor}")
    print(f"runs created {created}, tasks queued {queued}, requests counted {result['requests']}")
    print(f"psycopg INSERT + COMMIT: {commit_rate:,.0f}/s")
    assert result["non2xx"] == 0, "some triggers were not answered 202"
    assert created >= result["requests"], "runs missing"
    assert queued >= result["requests"], "tasks missing"
    p99 = result["p99_us"] / 1000
    title = (
        f"(b) async trigger, wrk -c{args.connections} -d{args.duration}s, "
        f"gunicorn -w {args.workers}, no worker draining the queue (PostgreSQL)"
    )
    ok = common.print_table(
        title,
        [
            {
                "figure": "trigger throughput",
                "result": f"{result['rps']:,.0f} req/s",
                "anchor": f"401 no-DB {anchor['rps']:,.0f} req/s",
                "ratio": f"{result['rps'] / anchor['rps']:.2f}x",
                "target": ">= 500 req/s",
                "ok": result["rps"] >= 500,
            },
            {
                "figure": "trigger p99 latency",
                "result": f"{p99:.1f} ms",
                "anchor": f"401 no-DB p99 {anchor['p99_us'] / 1000:.1f} ms",
                "ratio": f"{result['p99_us'] / max(anchor['p99_us'], 1):.2f}x",
                "target": "<= 50 ms",
                "ok": p99 <= 50,
            },
            {
                "figure": "(info) through the operation",
                "result": f"{operation['rps']:,.0f} req/s",
                "anchor": f"p99 {operation['p99_us'] / 1000:.1f} ms",
                "ratio": f"{operation['rps'] / anchor['rps']:.2f}x",
                "target": "-",
                "ok": True,
            },
            {
                "figure": "(info) trigger p50 / p95",
                "result": f"{result['p50_us'] / 1000:.1f} / {result['p95_us'] / 1000:.1f} ms",
                "anchor": f"INSERT+COMMIT {commit_rate:,.0f}/s",
                "ratio": f"{result['rps'] / commit_rate:.2f}x",
                "target": "-",
                "ok": True,
            },
        ],
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
