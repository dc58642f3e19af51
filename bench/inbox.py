"""(issue 13) The inbox page's p95 with 10,000 runs waiting for a person.

Seeds (once; --reseed to redo, or when --waiting changes) in a database of its own
(loops_bench_inbox) one organization with 8 loops and --waiting runs waiting for a person (80 %
approvals with a tool and a tool input, 20 % questions; assignees mixed: none, role:admin,
role:editor, user:<the bench user>; a quarter with remind_after, some of them overdue), each with
its waiting step, written as runs.engine.waits writes them, plus --ended runs that have ended (the
inbox must not read them), by COPY; then VACUUM ANALYZE. Then, over real HTTP to `gunicorn -w 2` on
loopback with the session cookie of a logged-in owner, one client, --requests requests per case
(the cases take turns, so the machine's noise falls on all alike) after 10 warm-up requests each,
p50 and p95 of:
  - the inbox page             GET /inbox/                (25 items, the count, the filters)
  - (info) filtered            GET /inbox/?assignee=me&kind=approval
  - (info) deep page           GET /inbox/?page=200       (items 4,976 to 5,000)
  - (info) a live poll         GET /inbox/?since=<token>  (HTMX; 204 when nothing changed)
  - (info) the nav badge poll  GET /inbox/count/
  - (info) the API             GET /api/v1/approvals?limit=100 (bearer token)
Anchor, same run and stack: the runs list page GET /runs/ (25 of the organization's runs, newest
first, the same session). Target: the inbox page's p95 <= 100 ms. With --explain (default) the inbox's SELECT and
COUNT are captured in-process and their EXPLAIN ANALYZE plans printed.

    .venv/bin/python bench/inbox.py [--waiting 10000] [--ended 50000] [--requests 200] [--reseed]
"""

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench.runs_list import ulid_at

DATABASE = "loops_bench_inbox"
ORG = "bench-inbox"
USERNAME = "bench-owner"
LOOPS = 8


def _row(model, values: dict) -> tuple:
    """A row for COPY: every concrete column, its default unless given (JSON as text)."""
    from django.db.models import JSONField

    row = []
    for field in model._meta.concrete_fields:
        value = values[field.attname] if field.attname in values else field.get_default()
        if isinstance(field, JSONField) and value is not None:
            value = json.dumps(value)
        row.append(value)
    return tuple(row)


def _columns(model) -> str:
    return ", ".join(f'"{f.column}"' for f in model._meta.concrete_fields)


def seed(org, user, waiting: int, ended: int) -> None:
    import psycopg

    from loops.demo import GREETING_CODE
    from loops.models import Loop
    from loops.services import loop_create
    from runs.inbox import stamp
    from runs.models import Run, Step

    loops = []
    for n in range(LOOPS):
        slug = f"loop-{n}"
        loop = Loop.objects.filter(organization=org, slug=slug).first() or loop_create(
            organization=org, slug=slug, name=f"Loop {n}", code=GREETING_CODE
        )
        loops.append(Loop.objects.get(pk=loop.pk))
    rng = random.Random(13)
    now = datetime.now(UTC)
    assignee_sets = [[], [], ["role:admin"], ["role:editor"], [f"user:{USERNAME}", "role:admin"]]
    t0 = time.perf_counter()
    with psycopg.connect(common.psycopg_dsn()) as conn:
        conn.execute("DELETE FROM runs_step WHERE run_id IN "
                     "(SELECT id FROM runs_run WHERE organization_id = %s)", [org.pk])  # fmt: skip
        conn.execute("DELETE FROM runs_run WHERE organization_id = %s", [org.pk])
        conn.execute("SET session_replication_role = replica")  # seeding: skip FK triggers
        runs, steps = [], []
        for i in range(waiting + ended):
            loop = loops[i % LOOPS]
            created = now - timedelta(seconds=rng.randrange(60, 30 * 86400))
            ms = int(created.timestamp() * 1000)
            run_id = f"run_{ulid_at(ms, rng)}"
            base = {
                "id": run_id, "organization_id": org.pk, "loop_id": loop.pk,
                "version_id": loop.active_version_id, "trigger_type": "api_token",
                "input": {"ticket": i}, "created_at": created, "started_at": created,
                "task_id": "", "queue": "loops",
            }  # fmt: skip
            if i >= waiting:
                duration = rng.randrange(20, 5000)
                runs.append(_row(Run, {**base, "status": "succeeded", "output": {"ok": True},
                                       "completed_at": created + timedelta(milliseconds=duration),
                                       "duration_ms": duration}))  # fmt: skip
                continue
            since = created + timedelta(seconds=rng.randrange(1, 30))
            step_id = f"step_{ulid_at(int(since.timestamp() * 1000), rng)}"
            approval = rng.random() < 0.8
            assignees = assignee_sets[i % len(assignee_sets)]
            name = "Approve refund" if approval else "Reason"
            prompt = (f"Refund {rng.randrange(10, 900)} EUR for ticket {i}?" if approval
                      else f"Why was ticket {i} escalated?")  # fmt: skip
            pending = {"kind": "approval" if approval else "input", "prompt": prompt,
                       "stepName": name, "stepId": step_id, "since": stamp(since),
                       "assignees": assignees}  # fmt: skip
            step_input = {"prompt": prompt}
            if approval:
                tool_input = {"ticket": i, "amount": rng.randrange(10, 900), "currency": "EUR"}
                pending.update(tool="refund", toolInput=tool_input)
                step_input.update(tool="refund", toolInput=tool_input, onReject="stop")
            if assignees:
                step_input["assignees"] = assignees
            if i % 4 == 0:
                step_input["remindAfter"] = 3600.0
                pending["overdueAt"] = stamp(since + timedelta(hours=1))
                if since < now - timedelta(hours=2):
                    pending["overdue"] = pending["reminded"] = True
            runs.append(_row(Run, {**base, "status": "waiting", "pending": pending,
                                   "total_steps": 1}))  # fmt: skip
            steps.append(_row(Step, {
                "id": step_id, "run_id": run_id, "order": 0, "key": f"{name}#1", "name": name,
                "kind": "approval" if approval else "input", "status": "waiting",
                "input": step_input, "started_at": since, "line": 4,
            }))  # fmt: skip
        with conn.cursor() as cur:
            with cur.copy(f"COPY runs_run ({_columns(Run)}) FROM STDIN") as copy:
                for row in runs:
                    copy.write_row(row)
            with cur.copy(f"COPY runs_step ({_columns(Step)}) FROM STDIN") as copy:
                for row in steps:
                    copy.write_row(row)
        conn.commit()
    # As autovacuum would have by then: statistics, and the visibility map that lets the
    # inbox's COUNT read its partial index alone.
    with psycopg.connect(common.psycopg_dsn(), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE runs_run")
        conn.execute("VACUUM ANALYZE runs_step")
    print(f"seeded {waiting:,} waiting runs and {ended:,} ended ones in "
          f"{time.perf_counter() - t0:.1f} s")  # fmt: skip


def session_cookie(user) -> str:
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def timed_together(client, cases: dict, count: int) -> dict:
    """Each case `count` times, after 10 warm-up requests each, taking turns (one request of
    each case per round), so that the machine's noise falls on all of them alike. `cases`:
    name -> (url, expected status, extra headers)."""
    for url, status, headers in cases.values():
        for _ in range(10):
            assert client.get(url, headers=headers).status_code == status, url
    times = {name: [] for name in cases}
    for _ in range(count):
        for name, (url, status, headers) in cases.items():
            start = time.perf_counter()
            response = client.get(url, headers=headers)
            times[name].append((time.perf_counter() - start) * 1000)
            assert response.status_code == status, (url, response.status_code, response.text[:300])
    return times


def explain(user) -> str:
    """The inbox page's SELECT of runs_run (the page and the count), with their plans."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    client.force_login(user)
    with CaptureQueriesContext(connection) as ctx:
        response = client.get("/inbox/")
    assert response.status_code == 200
    out = []
    for sql in [q["sql"] for q in ctx.captured_queries if 'FROM "runs_run"' in q["sql"]]:
        with connection.cursor() as cur:
            cur.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}")
            plan = "\n".join(f"    {row[0]}" for row in cur.fetchall())
        out.append(f"  SQL: {sql}\n{plan}")
    return "\n\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--ended", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--reseed", action="store_true")
    parser.add_argument("--no-explain", action="store_true")
    args = parser.parse_args()

    common.setup(DATABASE)
    import httpx
    from django.contrib.auth import get_user_model

    from accounts.models import Role
    from accounts.services import membership_set
    from runs.inbox import waiting_count
    from runs.models import Run

    org, _, raw = common.seed(ORG, loop_slug="loop-0")
    user = get_user_model().objects.filter(username=USERNAME).first()
    if user is None:
        user = get_user_model().objects.create_user(USERNAME)  # logged in by its session only
    membership_set(organization=org, user=user, role=Role.OWNER)
    have = waiting_count(org)
    total = Run.objects.filter(organization=org).count()
    if args.reseed or have != args.waiting or total != args.waiting + args.ended:
        seed(org, user, args.waiting, args.ended)
    have = waiting_count(org)
    print(f"runs of {ORG}: {Run.objects.filter(organization=org).count():,}, "
          f"{have:,} waiting for a person")  # fmt: skip
    cookie = session_cookie(user)

    proc, base = common.start_gunicorn(workers=2)
    try:
        with httpx.Client(base_url=base, headers={"Cookie": cookie}, timeout=60) as client:
            first = client.get("/inbox/")
            assert first.status_code == 200, first.text[:500]
            assert f"{have} waiting" in first.text, first.text[:500]
            token = first.text.split("since=")[1].split('"')[0]
            htmx = {"HX-Request": "true", "HX-Target": "inbox-results"}
            bearer = {"Authorization": f"Bearer {raw}"}
            results = timed_together(client, {
                "anchor": ("/runs/", 200, None),
                "inbox": ("/inbox/", 200, None),
                "filtered": ("/inbox/?assignee=me&kind=approval", 200, None),
                "deep": ("/inbox/?page=200", 200, None),
                "poll": (f"/inbox/?since={token}", 204, htmx),
                "badge": ("/inbox/count/", 200, None),
                "api": ("/api/v1/approvals?limit=100", 200, bearer),
            }, args.requests)  # fmt: skip
    finally:
        common.stop(proc)

    a95 = common.percentile(results["anchor"], 95)
    cases = [
        ("inbox", "GET /inbox/ (page 1 of 400)", True),
        ("filtered", "(info) GET /inbox/?assignee=me&kind=approval", False),
        ("deep", "(info) GET /inbox/?page=200", False),
        ("poll", "(info) live poll, nothing changed (204)", False),
        ("badge", "(info) GET /inbox/count/ (nav badge)", False),
        ("api", "(info) GET /api/v1/approvals?limit=100", False),
    ]
    rows = [{
        "figure": "(anchor) GET /runs/ (runs list page)",
        "result": f"p50 {common.percentile(results['anchor'], 50):.1f} / p95 {a95:.1f} ms",
        "target": "-", "ok": True,
    }]  # fmt: skip
    for key, figure, judged in cases:
        p50, p95 = common.percentile(results[key], 50), common.percentile(results[key], 95)
        rows.append({
            "figure": figure, "result": f"p50 {p50:.1f} / p95 {p95:.1f} ms",
            "anchor": f"runs list p95 {a95:.1f} ms", "ratio": f"{p95 / a95:.2f}x",
            "target": "p95 <= 100 ms" if judged else "-", "ok": p95 <= 100 if judged else True,
        })  # fmt: skip
    ok = common.print_table(
        f"(issue 13) inbox page, {have:,} runs waiting for a person "
        f"({Run.objects.filter(organization=org).count():,} runs), {args.requests} requests per "
        "case, real HTTP to gunicorn -w 2 (PostgreSQL)",
        rows,
    )
    if not args.no_explain:
        print("\nThe inbox page's queries of runs_run:")
        print(explain(user))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
