"""Bulk cancel of 100,000 waiting runs (issue 13, item 3) versus one SQL UPDATE of the same rows.

Set-up: --runs (100,000) runs of one organization are written waiting by COPY, each with its
waiting step (a wait for an event, as a waiting run has), beside --others (5,000) runs that
must not be touched (another organization's waiting runs, and succeeded runs of the same
organization). A copy of runs_run's and runs_step's rows is kept, and every measurement
starts from those rows restored (TRUNCATE + INSERT … SELECT), VACUUM (ANALYZE) and a
CHECKPOINT, so that each one finds the same tables in the same state.

Results, over real HTTP to gunicorn (-w 2), the product's own surfaces only:
- dry run: `POST /api/v1/runs/bulk` with `{"action": "cancel", "filter": {"status":
  "waiting"}, "dryRun": true}`, until its 200 (median of --dry-runs, 5);
- bulk cancel: from that POST without dryRun until `GET /api/v1/bulk/{id}` (polled every
  50 ms) answers `done`, with a real `manage.py qcluster` (LOOPS_WORKERS=--workers, 2, the ORM
  broker) draining the job's chunks; the cluster is started and idle before the POST. Then
  the script checks that exactly the 100,000 runs are cancelled (their steps failed as
  cancelled) and the others untouched. For information: the time until the 202.
Anchor, same run, same rows: one SQL UPDATE that cancels them (status, completed_at,
duration_ms, lease_expires_at, as the product writes them) and its commit, psycopg on one
connection. For information: that UPDATE plus the UPDATE of their steps in one transaction.
Target: each result <= 5 x the anchor.

    .venv/bin/python bench/bulk_cancel.py [--runs 100000] [--repeat 1]
"""

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from bench import engine_throughput as et

ORG, OTHER_ORG = "bench-bulk", "bench-bulk-other"
# Tables the measurements change, and the tables of their saved rows.
SAVED = {"runs_run": "bench_bulk_saved_run", "runs_step": "bench_bulk_saved_step"}
# Emptied before each measurement (what a previous one left: jobs, their items, tasks, audit).
SCRATCH = ["runs_bulkjobitem", "runs_bulkjob", "runs_timer", "django_q_ormq",
           "accounts_auditevent", "runs_webhookdelivery"]  # fmt: skip


def say(message: str) -> None:
    et.say(message)


class Bench:
    def __init__(self, args):
        import psycopg

        self.args = args
        self.rows: list[dict] = []
        self.db = psycopg.connect(common.psycopg_dsn(), autocommit=True)

    # --- data

    def seed(self) -> None:
        """The organizations, a loop each, a token; the runs and their steps, by COPY."""
        from accounts.models import Organization
        from accounts.services import organization_create, token_create
        from loops.demo import GREETING_CODE
        from loops.models import Loop
        from loops.services import loop_create

        def org_of(slug):
            return Organization.objects.filter(slug=slug).first() or organization_create(slug=slug)

        def loop_of(org):
            return Loop.objects.filter(organization=org, slug="greeting").first() or loop_create(
                organization=org, slug="greeting", name="Greeting", code=GREETING_CODE
            )

        self.org, self.other = org_of(ORG), org_of(OTHER_ORG)
        self.loop, self.other_loop = loop_of(self.org), loop_of(self.other)
        self.loop.refresh_from_db()
        self.other_loop.refresh_from_db()
        _, self.token = token_create(organization=self.org, name=f"bench {time.time():.0f}")
        self.db.execute(
            "TRUNCATE runs_run, runs_step, runs_batch, " + ", ".join(SCRATCH) + " CASCADE"
        )
        t = time.perf_counter()
        n, others = self.args.runs, self.args.others
        self.copy(self.loop, n, "waiting", with_steps=True)
        self.copy(self.other_loop, others // 2, "waiting", with_steps=True)
        self.copy(self.loop, others - others // 2, "succeeded", with_steps=False)
        for table, saved in SAVED.items():
            self.db.execute(f"DROP TABLE IF EXISTS {saved}")
            self.db.execute(f"CREATE TABLE {saved} AS SELECT * FROM {table}")
        say(f"seeded {n:,} waiting runs with their steps and {others:,} others by COPY "
            f"in {time.perf_counter() - t:.1f} s")  # fmt: skip

    def copy(self, loop, n: int, status: str, with_steps: bool) -> None:
        import psycopg
        from django.utils import timezone

        from loops_project.ids import step_id
        from runs.batches import new_run_ids

        now = timezone.now()
        started = now - timedelta(minutes=5)
        ids = new_run_ids(n)
        waiting = status == "waiting"
        with psycopg.connect(common.psycopg_dsn()) as conn, conn.cursor() as cur:
            columns = ("id, organization_id, loop_id, version_id, test_code, status, trigger_type, "
                       "mode, input, error_message, error_type, error_step, error_traceback, "
                       "pending, created_at, started_at, completed_at, cpu_time_ms, attempt, "
                       "total_steps, stored_bytes, depth, task_id, queue, execution_id, "
                       "executions")  # fmt: skip
            pending = '{"kind": "event", "eventType": "go", "stepName": "Wait"}'
            with cur.copy(f"COPY runs_run ({columns}) FROM STDIN") as copy:
                for run_id in reversed(ids):  # as the batch path writes them (runs/batches.py)
                    copy.write_row((
                        run_id, loop.organization_id, loop.pk, loop.active_version_id, "",
                        status, "api_token", "live", '{"bench": true}', "", "", "", "",
                        pending if waiting else None, now, started, None if waiting else now,
                        0, 1, 1, 0, 0, "", "loops", "", 1,
                    ))  # fmt: skip
            if with_steps:
                columns = ('id, run_id, "order", key, name, kind, status, attempts, run_attempt, '
                           "started_at")  # fmt: skip
                with cur.copy(f"COPY runs_step ({columns}) FROM STDIN") as copy:
                    for run_id in ids:
                        copy.write_row(
                            (step_id(), run_id, 0, "Wait#1", "Wait", "event", status, 0, 1, started)
                        )

    def restore(self) -> None:
        """The saved rows back, the scratch tables empty, statistics fresh, a checkpoint."""
        self.db.execute("TRUNCATE runs_run, runs_step, " + ", ".join(SCRATCH) + " CASCADE")
        for table, saved in SAVED.items():
            self.db.execute(f"INSERT INTO {table} SELECT * FROM {saved}")
        self.db.execute("VACUUM (ANALYZE) runs_run, runs_step, runs_bulkjob, runs_bulkjobitem, "
                        "django_q_ormq, accounts_auditevent")  # fmt: skip
        self.db.execute("CHECKPOINT")

    def counts(self) -> dict:
        rows = self.db.execute(
            "SELECT r.organization_id = %s, r.status, count(*) FROM runs_run r "
            "GROUP BY 1, 2", [self.org.pk],
        ).fetchall()  # fmt: skip
        return {(ours, status): n for ours, status, n in rows}

    def steps_cancelled(self) -> int:
        return self.db.execute(
            "SELECT count(*) FROM runs_step s JOIN runs_run r ON r.id = s.run_id "
            "WHERE r.organization_id = %s AND s.status = 'failed' "
            "AND s.error->>'type' = 'Cancelled'", [self.org.pk],
        ).fetchone()[0]  # fmt: skip

    # --- the anchor

    def anchor(self, with_steps: bool) -> float:
        import psycopg

        self.restore()
        with psycopg.connect(common.psycopg_dsn()) as conn:
            t = time.perf_counter()
            cur = conn.execute(
                "UPDATE runs_run SET status = 'cancelled', completed_at = now(), "
                "duration_ms = CASE WHEN started_at IS NULL THEN 0 ELSE "
                "GREATEST(FLOOR(EXTRACT(EPOCH FROM (now() - started_at)) * 1000), 0) END, "
                "lease_expires_at = NULL "
                "WHERE organization_id = %s AND status = 'waiting'", [self.org.pk],
            )  # fmt: skip
            updated = cur.rowcount
            if with_steps:
                conn.execute(
                    "UPDATE runs_step s SET status = 'failed', finished_at = now(), "
                    """error = '{"message": "The run was cancelled", "type": "Cancelled"}' """
                    "FROM runs_run r WHERE r.id = s.run_id AND r.organization_id = %s "
                    "AND r.status = 'cancelled' AND s.status = 'waiting'", [self.org.pk],
                )  # fmt: skip
            conn.commit()
            elapsed = time.perf_counter() - t
        assert updated == self.args.runs, f"the anchor cancelled {updated} runs"
        what = "runs and steps" if with_steps else "runs"
        say(f"  anchor: one UPDATE ({what}) of {updated:,} runs + commit: {elapsed:.2f} s")
        return elapsed

    # --- the product

    def env(self) -> dict:
        drop = {"REDIS_URL", "LOOPS_WORKERS", "LOOPS_QUEUE", "DATABASE_URL", "DJANGO_LOG_LEVEL"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(common.SERVER_ENV)
        env["LOOPS_WORKERS"] = str(self.args.workers)
        return env

    def dry_runs(self, client) -> list[float]:
        times = []
        body = {"action": "cancel", "filter": {"status": "waiting"}, "dryRun": True}
        for _ in range(self.args.dry_runs):
            t = time.perf_counter()
            response = client.post("/api/v1/runs/bulk", json=body)
            times.append(time.perf_counter() - t)
            assert response.status_code == 200, response.text
            count = response.json()["data"]["count"]
            assert count == self.args.runs, f"the dry run counted {count}"
        say(f"  dry run: {self.args.runs:,} counted, median {statistics.median(times):.3f} s "
            f"of {len(times)}")  # fmt: skip
        return times

    def bulk(self, client) -> tuple[float, float] | None:
        self.restore()
        cluster = et.Cluster({**self.env(), "DJANGO_LOG_LEVEL": "WARNING"}, "bulk", 2)
        try:
            deadline = time.monotonic() + 60
            while len(cluster.workers()) < self.args.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)  # the clock's first rounds, the workers' connections
            body = {"action": "cancel", "filter": {"status": "waiting"}}
            t = time.perf_counter()
            response = client.post("/api/v1/runs/bulk", json=body)
            accepted = time.perf_counter() - t
            assert response.status_code == 202, response.text
            job = response.json()["data"]
            while True:
                data = client.get(f"/api/v1/bulk/{job['id']}").json()["data"]
                if data["status"] != "running":
                    break
                if cluster.died() is not None or time.perf_counter() - t > self.args.timeout:
                    say(f"  bulk cancel did not finish: {data}")
                    return None
                time.sleep(0.05)
            elapsed = time.perf_counter() - t
        finally:
            cluster.stop()
        assert data["status"] == "done", data
        assert (data["total"], data["done"], data["failed"]) == (self.args.runs,) * 2 + (0,), data
        counts = self.counts()
        others = self.args.others
        assert counts.get((True, "cancelled")) == self.args.runs, counts
        assert counts.get((True, "succeeded")) == others - others // 2, counts
        assert counts.get((False, "waiting")) == others // 2, counts
        assert self.steps_cancelled() == self.args.runs
        say(
            f"  bulk cancel: 202 after {accepted:.2f} s, done after {elapsed:.2f} s "
            f"(checked: {self.args.runs:,} cancelled with their steps, {others:,} untouched)"
        )
        return elapsed, accepted

    def run(self) -> bool:
        import httpx

        server = et.Server(self.env(), 2)
        client = httpx.Client(base_url=server.base, timeout=600,
                              headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        anchors, anchors_steps, dries, bulks, accepts = [], [], [], [], []
        try:
            for round_ in range(self.args.repeat):
                say(f"round {round_ + 1} of {self.args.repeat}")
                anchors.append(self.anchor(with_steps=False))
                anchors_steps.append(self.anchor(with_steps=True))
                self.restore()
                dries += self.dry_runs(client)
                result = self.bulk(client)
                if result is None:
                    return False
                bulks.append(result[0])
                accepts.append(result[1])
        finally:
            client.close()
            server.stop()
            et.stop_all()
        anchor = statistics.median(anchors)
        dry, done = statistics.median(dries), statistics.median(bulks)
        n = f"{self.args.runs:,}"
        self.rows += [
            {"figure": f"dry run, {n} waiting runs counted (POST … dryRun)",
             "result": f"{dry:.3f} s", "anchor": f"UPDATE {anchor:.2f} s",
             "ratio": f"{dry / anchor:.2f}x", "target": "<= 5x", "ok": dry <= 5 * anchor},
            {"figure": f"bulk cancel of {n} waiting runs, POST -> done",
             "result": f"{done:.2f} s", "anchor": f"UPDATE {anchor:.2f} s",
             "ratio": f"{done / anchor:.2f}x", "target": "<= 5x", "ok": done <= 5 * anchor},
            {"figure": "(info) bulk cancel vs UPDATE of the runs and of their steps",
             "result": f"{done:.2f} s",
             "anchor": f"UPDATEs {statistics.median(anchors_steps):.2f} s",
             "ratio": f"{done / statistics.median(anchors_steps):.2f}x", "target": "-",
             "ok": True},
            {"figure": "(info) POST -> 202 (job made, its 100,000 items written)",
             "result": f"{statistics.median(accepts):.2f} s", "anchor": "-", "ratio": "-",
             "target": "-", "ok": True},
        ]  # fmt: skip
        title = (
            f"bulk cancel (issue 13), PostgreSQL {common.BENCH_URL.rsplit('/', 1)[-1]}, "
            f"LOOPS_WORKERS={self.args.workers}, {os.cpu_count()} cores, "
            f"median of {self.args.repeat}"
        )
        return common.print_table(title, self.rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000, help="waiting runs to cancel")
    parser.add_argument("--others", type=int, default=5_000, help="runs that must stay as they are")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (medians)")
    parser.add_argument("--dry-runs", type=int, default=5, help="dry runs per round")
    parser.add_argument("--workers", type=int, default=2, help="LOOPS_WORKERS")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the bulk cancel")
    parser.add_argument("--database", default="loops_bench_bulk",
                        help="database name on BENCH_DATABASE_URL's server (one of its own)")  # fmt: skip
    return parser.parse_args(argv)


def main() -> int:
    import signal

    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say(f"bulk_cancel: {args.runs:,} runs; load average {common.load_average()}")
    common.setup(args.database)
    bench = Bench(args)
    bench.seed()
    try:
        ok = bench.run()
    finally:
        et.stop_all()
    say(f"done; load average {common.load_average()}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
