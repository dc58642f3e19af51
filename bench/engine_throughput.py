"""Engine throughput, latency, timers, fair turns and recovery with real workers (issue 11).

Every figure is printed next to an anchor measured in the same run; the script ends with the
table `figure, result, anchor, ratio, target, verdict` and exits 1 when a target is missed.
The product is driven only through its public surfaces: the HTTP API on gunicorn (the trigger
URL `POST /api/loop/{org}/{loop}`, `POST /api/v1/loops/{loop}/runs` with `{"inputs": [...]}`,
`GET /api/v1/runs/{id}`), `manage.py qcluster` subprocesses configured by environment
(DATABASE_URL, LOOPS_WORKERS, REDIS_URL, LOOPS_QUEUE), the services for set-up, and runs_run's
columns (status, created_at, started_at, completed_at, organization, loop, batch) for timing.
Brokers: `orm` (django-q2's ORM broker in the bench database) and `redis` (REDIS_URL = --redis,
a Redis database of the bench's own, flushed between measurements).

(a) Drain rate. --runs (2,000) runs of a 1-step loop are queued with no cluster running,
    through one batch request and through the trigger URL (8 concurrent clients); then a cluster
    with LOOPS_WORKERS=--workers (2) is started and timed from the first run started to the last
    run succeeded (min started_at .. max completed_at). Anchor: bare django-q2 as it ships
    draining as many no-op tasks (async_task with one reused broker, enqueued before the
    cluster starts; each task's result saved, django-q2's default), timed from the first task
    taken off the queue until every result is saved, same broker, same workers. Beside it, the
    same tasks with nothing saved (Loops' own save_limit), timed until the queue is empty (ORM:
    no row left, rows go at acknowledgement; Redis: the list is empty, i.e. without the last
    few tasks a worker already holds). Target: >= 0.5x the anchor for the batch and for the
    trigger URL, on each broker. For information: 0-step and 5-step loops through a batch.
(b) Latency on an idle cluster: --latency-runs (200) triggers at random intervals (20-100 ms);
    latency = completed_at - created_at. Anchor: bare django-q2 on the same cluster, a task
    that records the time a worker started it, enqueued at the same intervals (enqueue ->
    start). Target: p50 <= 25 ms with the Redis broker; the ORM broker's figure is information.
(c) Timer lateness: --timers (50) runs of `step.sleep("nap", 2)`, triggered at random
    intervals; lateness = the sleep step's finishedAt (from GET /api/v1/runs/{id}) minus its
    startedAt + 2 s (the run's completed_at instead, for information). Anchor: the idle
    trigger -> succeeded p50 of a 1-step run on the same cluster. Target: p99 <= 1 s.
(d) Fair turns: another organization's 1-step runs (--fair-runs, 20, about a second apart),
    trigger -> succeeded p95, while the first organization's --batch-size (100,000) run batch
    drains, next to the same p95 on the idle cluster just before. Target: <= 2 s. The cluster
    is stopped as soon as they have succeeded (or after --fair-timeout), and the batch deleted.
(e) Recovery: a --kill-size (2,000) run batch drained normally, then the same batch again with
    one worker process SIGKILLed once --kill-at (25 %) of it succeeded, while runs are running
    (a worker: a child of the cluster's process that has the most children, django-q2's
    sentinel; the one with children of its own and the most CPU time, i.e. executing runs).
    Result: the drain with the kill minus the normal drain. Target: <= 30 s beyond the normal.

Usage, from the repository root (BENCH_DATABASE_URL's server, database --database, created and
migrated when missing; cluster output in var/bench-qcluster-*.log):
    .venv/bin/python bench/engine_throughput.py                    # all, issue sizes
    .venv/bin/python bench/engine_throughput.py --only a,b --brokers redis --runs 500
    .venv/bin/python bench/engine_throughput.py --only d --batch-size 20000
"""

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

BASE_DIR = common.BASE_DIR

NOOP_TASK = "bench.engine_throughput.noop"
STAMP_TASK = "bench.engine_throughput.stamp"
STAMP_TABLE = "bench_throughput_stamp"
GAP = (0.02, 0.1)  # seconds between triggers in (b) and (c)
ORG_A, ORG_B = "bench-engine", "bench-engine-other"
PARTS = "abcde"
LIVE: list = []  # started processes (clusters, gunicorn), stopped on the way out


# --- the anchors' django-q2 tasks (imported by the cluster's workers: keep this module light) --


def noop() -> None:
    """Bare django-q2's trivial task: nothing."""


def stamp(tag: str, enqueued: float) -> None:
    """The latency anchor's task: records when a worker started it."""
    started = time.time()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {STAMP_TABLE} (tag, enqueued, started) VALUES (%s, %s, %s)",
            [tag, enqueued, started],
        )


def helper_main(args) -> int:
    """Enqueue the anchors' tasks from a process configured like the cluster (its broker)."""
    import django

    django.setup()
    from django_q.brokers import get_broker
    from django_q.tasks import async_task

    broker = get_broker()  # one broker for all: async_task would otherwise make one per call
    rng = random.Random(args.seed)
    if args.helper in {"noop", "noop-saved"}:
        # noop-saved: the same, with its result saved (one INSERT per task, as a run's end)
        options = {"save": True} if args.helper == "noop-saved" else {}
        for _ in range(args.count):
            async_task(NOOP_TASK, broker=broker, **options)
    else:
        for _ in range(args.count):
            time.sleep(rng.uniform(*GAP))
            async_task(STAMP_TASK, args.tag, time.time(), broker=broker)
    print(json.dumps({"queue": broker.list_key, "size": broker.queue_size()}))
    return 0


# --- programs --------------------------------------------------------------------------------


def steps_program(n: int) -> str:
    return (
        "class Steps(Loop):\n    def run(self, event, step):\n"
        f"        for i in range({n}):\n"
        "            step.do('Step', lambda i=i: {'i': i})\n"
        f"        return {{'steps': {n}}}\n"
    )


def nap_program(seconds: float) -> str:
    return (
        "class Nap(Loop):\n    def run(self, event, step):\n"
        f"        step.sleep('nap', {seconds})\n"
        "        return {'awake': True}\n"
    )


# --- small helpers ---------------------------------------------------------------------------


def clock() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S")


def say(message: str) -> None:
    print(f"[{clock()}] {message}", flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:,.2f} s"


def pct(values: list[float], p: float) -> float:
    return common.percentile(values, p)


# --- processes -------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, CPU ticks, start time) from /proc/<pid>/stat, or None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def process_tree(root: int) -> tuple[dict[int, tuple], dict[int, list[int]], dict[int, int]]:
    """The live descendants of `root`: their stats, children and depth below root."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := proc_stat(int(name))) is not None:
            table[int(name)] = stat
    children: dict[int, list[int]] = {}
    for pid, (state, ppid, _, _) in table.items():
        if state != "Z":
            children.setdefault(ppid, []).append(pid)
    depth = {root: 0}
    stack = [root]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            depth[child] = depth[pid] + 1
            stack.append(child)
    return {p: table[p] for p in depth if p in table}, children, depth


class Cluster:
    """`manage.py qcluster` in a session (process group) of its own; output to var/."""

    def __init__(self, env: dict, label: str, workers: int):
        (BASE_DIR / "var").mkdir(exist_ok=True)
        self.workers_count = workers
        self.log = open(BASE_DIR / "var" / f"bench-qcluster-{label}.log", "a")  # noqa: SIM115
        self.log.write(f"\n--- {datetime.now(UTC).isoformat()} qcluster for {label}\n")
        self.log.flush()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=BASE_DIR, env=env,
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.seen: dict[int, int] = {}  # pid -> start time, every process of the cluster seen
        self.stopping = False
        LIVE.append(self)

    def died(self) -> int | None:
        """The exit code if the cluster ended without being stopped (killed from outside)."""
        return None if self.stopping else self.proc.poll()

    def snapshot(self) -> tuple[dict, dict, dict]:
        stats, children, depth = process_tree(self.proc.pid)
        self.seen.update({pid: stat[3] for pid, stat in stats.items()})
        return stats, children, depth

    def workers(self) -> list[int]:
        """The worker processes, busiest first: children of the process with most children
        (django-q2's sentinel); those with children of their own (the sandbox they execute
        runs in) and the most CPU time first."""
        stats, children, depth = self.snapshot()
        if len(stats) < 2:
            return []
        parent = max(stats, key=lambda p: (len(children.get(p, [])), -depth[p]))
        kids = [p for p in children.get(parent, []) if p in stats]
        kids.sort(key=lambda p: (bool(children.get(p)), stats[p][2]), reverse=True)
        return kids[: self.workers_count]

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the qcluster process (django-q2 stops its workers), SIGKILL to the group
        after `grace` seconds, then SIGKILL to any process of the cluster still alive (the
        sandbox runs in sessions of its own)."""
        if self in LIVE:
            LIVE.remove(self)
        self.stopping = True
        if self.proc.poll() is None:
            self.snapshot()
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self.proc.poll() is None and time.monotonic() < deadline:
                self.snapshot()
                time.sleep(0.2)
            if self.proc.poll() is None:
                say(f"  cluster {self.proc.pid} still up after {grace:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        time.sleep(0.3)
        for pid, started in self.seen.items():
            stat = proc_stat(pid)
            if stat is not None and stat[3] == started and stat[0] != "Z":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


class Server:
    """gunicorn with the broker's environment."""

    def __init__(self, env: dict, workers: int):
        self.proc, self.base = common.start_gunicorn(workers=workers, env=env)
        LIVE.append(self)

    def stop(self) -> None:
        if self in LIVE:
            LIVE.remove(self)
        common.stop(self.proc)


def stop_all() -> None:
    for proc in list(reversed(LIVE)):
        try:
            proc.stop()
        except Exception as exc:  # keep stopping the others
            print(f"could not stop {proc}: {exc}", file=sys.stderr)


# --- HTTP --------------------------------------------------------------------------------------


class Api:
    def __init__(self, base: str, token: str):
        import httpx

        self.base, self.token = base, token
        self.local = threading.local()
        self.httpx = httpx

    @property
    def client(self):
        if not hasattr(self.local, "client"):
            self.local.client = self.httpx.Client(
                base_url=self.base, timeout=900,
                headers={"Authorization": f"Bearer {self.token}"},
            )  # fmt: skip
        return self.local.client

    def trigger(self, org: str, loop: str, body: dict) -> str:
        response = self.client.post(f"/api/loop/{org}/{loop}", json=body)
        if response.status_code != 202:
            raise RuntimeError(f"trigger: {response.status_code} {response.text[:300]}")
        return response.json()["runId"]

    def batch(self, loop: str, inputs: list) -> str:
        response = self.client.post(f"/api/v1/loops/{loop}/runs", json={"inputs": inputs})
        if response.status_code != 202:
            raise RuntimeError(f"batch: {response.status_code} {response.text[:300]}")
        return response.json()["data"]["batchId"]

    def run(self, run_id: str) -> dict:
        response = self.client.get(f"/api/v1/runs/{run_id}")
        response.raise_for_status()
        return response.json()["data"]


# --- the bench ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        import psycopg

        self.args = args
        self.rows: list[dict] = []
        self.db = psycopg.connect(common.psycopg_dsn(), autocommit=True)
        self.redis = None
        self.active: Cluster | None = None  # the cluster running now
        from django_q.models import OrmQ, Schedule, Task

        from runs.models import Batch, Run

        self.run_table = Run._meta.db_table
        self.batch_table = Batch._meta.db_table
        self.queue_table = OrmQ._meta.db_table
        self.task_table = Task._meta.db_table
        self.schedule_table = Schedule._meta.db_table

        # Tables whose rows belong to a run (steps, logs, events, ...), deleted with it.
        self.run_children = [
            (f.related_model._meta.db_table, f.field.column)
            for f in Run._meta.get_fields(include_hidden=True)
            if f.auto_created and not f.concrete and f.is_relation and f.related_model is not Run
        ]
        self.queue_key = args.queue or "loops"  # django-q2's list key: the cluster_name
        self.db.execute(
            f"CREATE TABLE IF NOT EXISTS {STAMP_TABLE} "
            "(tag text, enqueued double precision, started double precision)"
        )

    # --- set-up

    def seed(self) -> None:
        from accounts.models import Organization
        from accounts.services import organization_create, token_create
        from loops.models import Loop
        from loops.services import loop_create

        def org_of(slug):
            return Organization.objects.filter(slug=slug).first() or organization_create(slug=slug)

        def loop_of(org, slug, code):
            loop = Loop.objects.filter(organization=org, slug=slug).first()
            if loop is not None and (
                loop.active_version is None or loop.active_version.code != code
            ):
                self.delete_runs("loop_id = %s", [loop.pk])
                loop.delete()
                loop = None
            return loop or loop_create(organization=org, slug=slug, name=slug, code=code)

        self.org_a, self.org_b = org_of(ORG_A), org_of(ORG_B)
        self.loops = {
            "one": loop_of(self.org_a, "one-step", steps_program(1)),
            "zero": loop_of(self.org_a, "zero-steps", steps_program(0)),
            "five": loop_of(self.org_a, "five-steps", steps_program(5)),
            "nap": loop_of(self.org_a, "nap", nap_program(self.args.sleep)),
        }
        self.other_loop = loop_of(self.org_b, "one-step", steps_program(1))
        _, self.token_a = token_create(organization=self.org_a, name=f"bench {time.time():.0f}")
        _, self.token_b = token_create(organization=self.org_b, name=f"bench {time.time():.0f}")
        # A clean slate: no run of ours left pending from an interrupted run of the bench.
        for org in (self.org_a, self.org_b):
            self.delete_runs("organization_id = %s", [org.pk])
            self.db.execute(f"DELETE FROM {self.batch_table} WHERE organization_id = %s", [org.pk])

    def env(self, broker: str) -> dict:
        """The environment of gunicorn, the cluster and the helpers for a broker."""
        drop = {"REDIS_URL", "LOOPS_WORKERS", "LOOPS_QUEUE", "DATABASE_URL", "DJANGO_LOG_LEVEL"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env.update(common.SERVER_ENV)
        env["LOOPS_WORKERS"] = str(self.args.workers)
        if broker == "redis":
            env["REDIS_URL"] = self.args.redis
        if self.args.queue:
            env["LOOPS_QUEUE"] = self.args.queue
        return env

    def cluster(self, broker: str, label: str) -> Cluster:
        env = {**self.env(broker), "DJANGO_LOG_LEVEL": "WARNING"}  # production's default
        self.active = Cluster(env, f"{label}-{broker}", self.args.workers)
        return self.active

    def cluster_died(self, what: str) -> bool:
        code = self.active.died() if self.active else None
        if code is not None:
            say(f"  {what}: the cluster exited with code {code} without being stopped")
        return code is not None

    def connect_redis(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(self.args.redis)
        # django-q2's Redis list, as the broker names it (asked of a helper with that broker).
        self.redis_key = self.helper("redis", "noop", 0)["queue"]
        ours = (self.redis_key.encode(), b"django_q:", b":1:")
        foreign = [k for k in self.redis.scan_iter(count=1000) if not k.startswith(ours)]
        if foreign:
            raise SystemExit(
                f"{self.args.redis} holds keys that are not the bench's ({foreign[:5]}): "
                "give --redis a database number of the bench's own"
            )

    # --- database

    def one(self, sql: str, params=()) -> tuple:
        return self.db.execute(sql, params).fetchone()

    def delete_runs(self, where: str, params: list) -> int:
        """Delete runs and the rows that belong to them, in one transaction.

        Foreign-key triggers are off for it when the bench's role may (a superuser): every row
        that references these runs goes in the same transaction, and runs_step's reference to
        itself (parent_id) has no index, so each deleted step's check would scan runs_step
        (100,000 runs of one step: 159 s instead of a few)."""
        import psycopg

        with self.db.transaction():
            try:
                with self.db.transaction():
                    self.db.execute("SET LOCAL session_replication_role = replica")
            except psycopg.errors.InsufficientPrivilege:
                pass
            self.db.execute(
                f"CREATE TEMP TABLE doomed ON COMMIT DROP AS "
                f"SELECT id FROM {self.run_table} WHERE {where}",
                params,
            )
            for table, column in self.run_children:
                self.db.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM doomed)")
            cur = self.db.execute(
                f"DELETE FROM {self.run_table} WHERE id IN (SELECT id FROM doomed)"
            )
            return cur.rowcount

    def purge_queues(self) -> None:
        """Empty the queues and vacuum: every measurement starts from the same state."""
        self.db.execute(f"DELETE FROM {self.queue_table}")
        if self.redis is not None:
            self.redis.flushdb()
        self.vacuum()

    def vacuum(self) -> None:
        """VACUUM (ANALYZE) the tables runs and tasks churn. This machine's PostgreSQL runs
        with autovacuum off (conf.d/90-ci.conf): without it the dead rows of every drain stay
        and the broker's queue scans and run lookups slow down from one measurement to the
        next (the ORM broker's anchor fell from 739 to 234 tasks/s in one run)."""
        tables = [self.run_table, self.batch_table, self.queue_table, self.task_table,
                  self.schedule_table, STAMP_TABLE, *{t for t, _ in self.run_children}]  # fmt: skip
        self.db.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")

    def queue_state(self, broker: str) -> tuple[int, int]:
        """(tasks not taken, tasks not done) on the broker's queue."""
        if broker == "redis":
            n = self.redis.llen(self.redis_key)
            return n, n
        return self.one(
            f"SELECT count(*) FILTER (WHERE lock <= now()), count(*) FROM {self.queue_table} "
            "WHERE key = %s",
            [self.queue_key],
        )

    def counts(self, where: str, params: list) -> tuple[int, int, int]:
        """(succeeded, failed or cancelled, all) runs."""
        return self.one(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), "
            "count(*) FILTER (WHERE status IN ('failed', 'cancelled')), count(*) "
            f"FROM {self.run_table} WHERE {where}",
            params,
        )

    def wait_runs(self, where: str, params: list, n: int, timeout: float, what: str,
                  poll: float = 0.25) -> bool:  # fmt: skip
        """Wait until n runs succeeded; False on a failed run or the timeout."""
        start = time.monotonic()
        last_note = start
        while True:
            ok, failed, _ = self.counts(where, params)
            if ok >= n:
                return True
            now = time.monotonic()
            if failed:
                say(f"  {what}: {failed} runs failed or were cancelled")
                return False
            if self.cluster_died(what):
                return False
            if now - start > timeout:
                say(f"  {what}: timeout after {timeout:.0f} s, {ok:,} of {n:,} succeeded")
                return False
            if now - last_note >= 30:
                say(f"  {what}: {ok:,} of {n:,} succeeded after {now - start:.0f} s")
                last_note = now
            time.sleep(poll)

    def window(self, where: str, params: list) -> tuple[float, float, float]:
        """(first started_at, last completed_at, the seconds between) as epoch seconds."""
        first, last = self.one(
            "SELECT EXTRACT(EPOCH FROM min(started_at)), EXTRACT(EPOCH FROM max(completed_at)) "
            f"FROM {self.run_table} WHERE {where} AND status = 'succeeded'",
            params,
        )
        return float(first), float(last), float(last) - float(first)

    def latencies(self, ids: list[str]) -> list[float]:
        rows = self.db.execute(
            f"SELECT EXTRACT(EPOCH FROM completed_at - created_at) FROM {self.run_table} "
            "WHERE id = ANY(%s) AND status = 'succeeded'",
            [ids],
        ).fetchall()
        return sorted(float(r[0]) for r in rows)

    # --- driving the product and the anchors

    def helper(self, broker: str, kind: str, count: int, tag: str = "") -> dict:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--helper", kind,
               "--count", str(count), "--tag", tag, "--seed", str(self.args.seed)]  # fmt: skip
        out = subprocess.run(cmd, cwd=BASE_DIR, env=self.env(broker), capture_output=True,
                             text=True, timeout=1800)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"helper {kind} failed: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def trigger_many(self, api: Api, org, loop, n: int, threads: int = 8) -> list[str]:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(lambda i: api.trigger(org.slug, loop.slug, {"i": i}), range(n)))

    def trigger_spaced(self, api: Api, org, loop, n: int, gap: tuple[float, float],
                       rng: random.Random) -> list[str]:  # fmt: skip
        ids = []
        for i in range(n):
            time.sleep(rng.uniform(*gap))
            ids.append(api.trigger(org.slug, loop.slug, {"i": i}))
        return ids

    def idle_latencies(self, api: Api, org, loop, n: int, gap, rng) -> list[float] | None:
        ids = self.trigger_spaced(api, org, loop, n, gap, rng)
        if not self.wait_runs("id = ANY(%s)", [ids], n, 120, "idle runs"):
            return None
        return self.latencies(ids)

    def warm_up(self, api: Api) -> None:
        """A few runs through the fresh cluster: each worker's sandbox started, connections
        made."""
        ids = self.trigger_many(api, self.org_a, self.loops["one"], 10, threads=2)
        self.wait_runs("id = ANY(%s)", [ids], len(ids), 120, "warm-up")

    # --- (a)

    def drain_noop(self, broker: str, n: int, saved: bool = False) -> float | None:
        """Bare django-q2's drain rate: from the first task taken to the last one done (the
        queue empty; with saved results, every result saved too: Redis's queue empties before
        the monitor has saved them)."""
        self.purge_queues()
        self.db.execute(f"DELETE FROM {self.task_table} WHERE func = %s", [NOOP_TASK])
        info = self.helper(broker, "noop-saved" if saved else "noop", n)
        waiting, _ = self.queue_state(broker)
        assert waiting == n, f"{waiting} no-op tasks queued, expected {n} ({info})"
        cluster = self.cluster(broker, "a-bare")
        start = end = None
        deadline = time.monotonic() + self.args.drain_timeout
        try:
            while time.monotonic() < deadline:
                waiting, undone = self.queue_state(broker)
                if saved and not undone:
                    (done,) = self.one(
                        f"SELECT count(*) FROM {self.task_table} WHERE func = %s", [NOOP_TASK]
                    )
                    undone = n - done
                now = time.monotonic()
                if start is None and waiting < n:
                    start = now
                if undone == 0:
                    end = now
                    break
                if self.cluster_died("bare django-q2"):
                    break

                time.sleep(0.002 if broker == "redis" else 0.005)
        finally:
            cluster.stop()
        what = "no-op tasks, results saved" if saved else "no-op tasks"
        if end is None or start is None or end <= start:
            say(f"  bare django-q2 ({broker}): did not drain in {self.args.drain_timeout} s")
            return None
        self.db.execute(f"DELETE FROM {self.task_table} WHERE func = %s", [NOOP_TASK])
        rate = n / (end - start)

        say(f"  bare django-q2, {n:,} {what} ({broker}): {secs(end - start)}, {rate:,.0f}/s")
        return rate

    def drain_runs(self, api: Api, broker: str, key: str, n: int, via: str) -> dict | None:
        loop = self.loops[key]
        where, params = "loop_id = %s", [loop.pk]
        self.delete_runs(where, params)
        self.db.execute(f"DELETE FROM {self.batch_table} WHERE loop_id = %s", [loop.pk])
        self.purge_queues()
        t = time.perf_counter()
        if via == "batch":
            api.batch(loop.slug, [{"i": i} for i in range(n)])
        else:
            self.trigger_many(api, self.org_a, loop, n)
        queued = time.perf_counter() - t
        ok, _, total = self.counts(where, params)
        assert total == n, f"{total} runs queued, expected {n}"
        assert ok == 0, f"{ok} runs succeeded before the cluster started"
        tasks, _ = self.queue_state(broker)
        cluster = self.cluster(broker, f"a-{key}-{via}")
        try:
            done = self.wait_runs(where, params, n, self.args.drain_timeout, f"{key} via {via}")
        finally:
            cluster.stop()
        if not done:
            return None
        _, _, window = self.window(where, params)
        rate = n / window
        say(f"  {n:,} runs of {loop.slug} via {via} ({broker}): queued in {secs(queued)} "
            f"({tasks:,} tasks), drained in {secs(window)}: {rate:,.0f} runs/s")  # fmt: skip
        self.delete_runs(where, params)
        return {"rate": rate, "window": window, "queued": queued}

    def part_a(self, api: Api, broker: str) -> None:
        n = self.args.runs
        say(f"(a) drain rate, {n:,} runs or tasks, LOOPS_WORKERS={self.args.workers}, {broker}")
        kinds = ("bare", "saved", "batch", "trigger", "zero", "five")
        found: dict[str, list[float]] = {k: [] for k in kinds}
        for round_ in range(self.args.repeat):
            if self.args.repeat > 1:
                say(f"  round {round_ + 1} of {self.args.repeat}")
            cases = [("saved", None), ("batch", ("one", "batch")), ("trigger", ("one", "trigger"))]
            if round_ == 0:
                cases += [("bare", None), ("zero", ("zero", "batch")), ("five", ("five", "batch"))]
            for name, case in cases:
                if case is None:
                    rate = self.drain_noop(broker, n, saved=name == "saved")
                else:
                    result = self.drain_runs(api, broker, case[0], n, case[1])
                    rate = result and result["rate"]
                if rate:
                    found[name].append(rate)
        bare = statistics.median(found["bare"]) if found["bare"] else None
        labels = {
            "batch": ("1-step runs/s, one batch", True),
            "trigger": ("1-step runs/s, trigger URL", True),
            "zero": ("(info) 0-step runs/s, batch", False),
            "five": ("(info) 5-step runs/s, batch", False),
        }
        # The verdict's anchor is django-q2 as it ships (every task's result saved, save_limit
        # 250); the same tasks with nothing saved (Loops' own setting) are shown beside it.
        saved = statistics.median(found["saved"]) if found["saved"] else None
        anchor = (f"django-q2 {saved:,.0f}/s (unsaved {bare:,.0f}/s)" if saved and bare
                  else "-")  # fmt: skip
        for name, (label, judged) in labels.items():
            rate = statistics.median(found[name]) if found[name] else None
            ratio = rate / saved if rate and saved else None
            unsaved = f" ({rate / bare:.2f}x)" if rate and bare else ""
            self.rows.append({
                "figure": f"(a) {label} [{broker}]",
                "result": f"{rate:,.0f}/s" if rate else "did not drain",
                "anchor": anchor,
                "ratio": f"{ratio:.2f}x{unsaved}" if ratio else "-",
                "target": ">= 0.5x" if judged else "-",
                "ok": (ratio is not None and ratio >= 0.5) if judged else True,
            })  # fmt: skip

    # --- (b) and (c): one idle cluster

    def part_b(self, api: Api, broker: str) -> None:
        n = self.args.latency_runs
        say(f"(b) trigger -> succeeded on an idle cluster, {n} runs ({broker})")
        rng = random.Random(self.args.seed)
        lat = self.idle_latencies(api, self.org_a, self.loops["one"], n, GAP, rng)
        tag = f"b-{broker}-{time.time():.0f}"
        self.helper(broker, "stamp", n, tag)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (count,) = self.one(f"SELECT count(*) FROM {STAMP_TABLE} WHERE tag = %s", [tag])
            if count >= n:
                break
            time.sleep(0.1)
        rows = self.db.execute(
            f"SELECT started - enqueued FROM {STAMP_TABLE} WHERE tag = %s", [tag]
        ).fetchall()
        self.db.execute(f"DELETE FROM {STAMP_TABLE} WHERE tag = %s", [tag])
        bare = sorted(r[0] for r in rows)
        b50, b99 = (pct(bare, 50), pct(bare, 99)) if bare else (None, None)
        anchor = f"bare django-q2 p50 {ms(b50)}, p99 {ms(b99)}" if bare else "-"
        if lat is None:
            self.rows.append({"figure": f"(b) trigger -> succeeded p50 [{broker}]",
                              "result": "runs did not succeed", "anchor": anchor,
                              "target": "<= 25 ms" if broker == "redis" else "-",
                              "ok": broker != "redis"})  # fmt: skip
            return
        p50, p99 = pct(lat, 50), pct(lat, 99)
        say(f"  runs: p50 {ms(p50)}, p95 {ms(pct(lat, 95))}, p99 {ms(p99)}, max {ms(lat[-1])}; "
            f"{anchor} ({len(bare)} tasks)")  # fmt: skip
        judged = broker == "redis"
        self.rows.append({
            "figure": f"(b) trigger -> succeeded p50, idle [{broker}]",
            "result": ms(p50),
            "anchor": anchor,
            "ratio": f"{p50 / b50:.1f}x" if b50 else "-",
            "target": "<= 25 ms" if judged else "(info)",
            "ok": p50 <= 0.025 if judged else True,
        })  # fmt: skip
        self.rows.append({
            "figure": f"(b) (info) trigger -> succeeded p99 [{broker}]",
            "result": ms(p99), "anchor": f"bare p99 {ms(b99)}" if b99 else "-",
            "ratio": f"{p99 / b99:.1f}x" if b99 else "-", "target": "-", "ok": True,
        })  # fmt: skip

    def part_c(self, api: Api, broker: str) -> None:
        n, sleep = self.args.timers, self.args.sleep
        say(f"(c) timer lateness, {n} runs of step.sleep('nap', {sleep}) ({broker})")
        rng = random.Random(self.args.seed + 1)
        idle = self.idle_latencies(api, self.org_a, self.loops["one"], 20, GAP, rng)
        anchor = f"idle run p50 {ms(pct(idle, 50))}" if idle else "-"
        loop = self.loops["nap"]
        gap = (self.args.timer_gap * 0.3, self.args.timer_gap * 1.7)
        ids = self.trigger_spaced(api, self.org_a, loop, n, gap, rng)
        done = self.wait_runs("id = ANY(%s)", [ids], n, self.args.timer_timeout, "naps", 0.25)
        late, late_run = [], []
        for run_id in ids:
            run = api.run(run_id)
            naps = [s for s in run.get("steps", []) if s["name"] == "nap"]
            if not naps or not naps[0].get("startedAt"):
                continue
            due = datetime.fromisoformat(naps[0]["startedAt"]).timestamp() + sleep
            if naps[0].get("finishedAt"):
                late.append(datetime.fromisoformat(naps[0]["finishedAt"]).timestamp() - due)
            if run.get("completedAt"):
                late_run.append(datetime.fromisoformat(run["completedAt"]).timestamp() - due)
        late.sort()
        late_run.sort()
        if not done or len(late) < n:
            result = f"{len(late)} of {n} woke in {self.args.timer_timeout:.0f} s"
            if late:
                result += f"; p99 of those {secs(pct(late, 99))}"
            self.rows.append({"figure": f"(c) timer lateness p99 [{broker}]", "result": result,
                              "anchor": anchor, "target": "<= 1 s", "ok": False})  # fmt: skip
            return
        p50, p99 = pct(late, 50), pct(late, 99)
        say(f"  sleep step finished late by p50 {secs(p50)}, p99 {secs(p99)}, max {secs(late[-1])}, "
            f"min {secs(late[0])}; run completed late by p50 {secs(pct(late_run, 50))}, "
            f"p99 {secs(pct(late_run, 99))}; {anchor}")  # fmt: skip
        idle50 = pct(idle, 50) if idle else None
        self.rows.append({
            "figure": f"(c) timer lateness p99 (p50 {secs(p50)}) [{broker}]",
            "result": secs(p99),
            "anchor": anchor,
            "ratio": f"{p99 / idle50:.0f}x" if idle50 else "-",
            "target": "<= 1 s",
            "ok": p99 <= 1.0,
        })  # fmt: skip
        self.rows.append({
            "figure": f"(c) (info) sleep start + {sleep:g} s -> run succeeded, p50 / p99 [{broker}]",
            "result": f"{secs(pct(late_run, 50))} / {secs(pct(late_run, 99))}",
            "anchor": anchor, "target": "-", "ok": True,
        })  # fmt: skip

    # --- (d)

    def part_d(self, api_a: Api, api_b: Api, broker: str) -> None:
        n, size = self.args.fair_runs, self.args.batch_size
        say(f"(d) another organization's runs while a {size:,}-run batch drains ({broker})")
        loop, other = self.loops["one"], self.other_loop
        self.delete_runs("loop_id = ANY(%s)", [[loop.pk, other.pk]])
        self.purge_queues()
        rng = random.Random(self.args.seed + 2)
        gap = (0.8, 1.2)
        cluster = self.cluster(broker, "d")
        batch_id = None
        try:
            self.warm_up(api_a)
            idle = self.idle_latencies(api_b, self.org_b, other, n, gap, rng)
            i95 = pct(idle, 95) if idle else None
            say(f"  idle: p50 {ms(pct(idle, 50))}, p95 {ms(i95)}" if idle else "  idle: failed")
            t = time.perf_counter()
            batch_id = api_a.batch(loop.slug, [{"i": i} for i in range(size)])
            say(f"  batch of {size:,} accepted in {secs(time.perf_counter() - t)}")
            batch_at = time.monotonic()
            where = "batch_id = %s"
            self.wait_runs(where, [batch_id], 1, 120, "batch start", 0.1)
            ids = self.trigger_spaced(api_b, self.org_b, other, n, gap, rng)
            t_sent = time.monotonic()
            done = self.wait_runs("id = ANY(%s)", [ids], n, self.args.fair_timeout,
                                  "the other organization's runs", 0.25)  # fmt: skip
            waited = time.monotonic() - t_sent
            died = cluster.died()
            batch_ok, _, _ = self.counts(where, [batch_id])
            batch_rate = batch_ok / (time.monotonic() - batch_at)
            lat = self.latencies(ids)
            if not done:  # the unfinished ones waited at least until now
                (oldest,) = self.one(
                    f"SELECT EXTRACT(EPOCH FROM now() - min(created_at)) FROM {self.run_table} "
                    "WHERE id = ANY(%s) AND status <> 'succeeded'",
                    [ids],
                )
                lat += [float(oldest)] * (n - len(lat))
        finally:
            cluster.stop(grace=15)
        drained = batch_ok >= size
        b95 = pct(lat, 95)
        say(f"  busy: p50 {secs(pct(lat, 50))}, p95 {secs(b95)}, max {secs(max(lat))}; "
            f"{batch_ok:,} of {size:,} batch runs had succeeded when they were all done "
            f"({batch_rate:,.0f} runs/s; waited {waited:.0f} s after the last trigger)")  # fmt: skip
        result = (
            secs(b95) if done else f">= {secs(b95)} ({n - len(self.latencies(ids))} unfinished)"
        )
        if drained:
            result += " (batch fully drained first)"
        if died is not None:
            result = f"not measured: the cluster was killed (exit {died}) from outside"
        self.rows.append({
            "figure": f"(d) other org's run p95 during a {size:,}-run batch [{broker}]",
            "result": result,
            "anchor": f"idle p95 {ms(i95)}" if i95 else "-",
            "ratio": f"{b95 / i95:,.0f}x" if i95 else "-",
            "target": "<= 2 s",
            "ok": done and b95 <= 2.0 and died is None,
        })  # fmt: skip
        t = time.perf_counter()

        self.purge_queues()
        deleted = self.delete_runs("loop_id = ANY(%s)", [[loop.pk, other.pk]])
        self.db.execute(f"DELETE FROM {self.batch_table} WHERE loop_id = %s", [loop.pk])
        say(f"  deleted {deleted:,} runs in {secs(time.perf_counter() - t)}")

    # --- (e)

    def drain_batch(self, api: Api, broker: str, n: int, kill: bool) -> dict | None:
        loop = self.loops["one"]
        where, params = "loop_id = %s", [loop.pk]
        self.delete_runs(where, params)
        self.purge_queues()
        api.batch(loop.slug, [{"i": i} for i in range(n)])
        cluster = self.cluster(broker, "e-kill" if kill else "e-normal")
        info: dict = {}
        try:
            if kill:
                info = self.kill_worker(cluster, where, params, n)
            done = self.wait_runs(where, params, n, self.args.kill_timeout,
                                  "batch with a kill" if kill else "batch", 0.25)  # fmt: skip
            info["after"] = time.time()
        finally:
            cluster.stop()
        ok, _, _ = self.counts(where, params)
        info.update(done=done, succeeded=ok)
        if ok:
            info["first"], info["last"], info["window"] = self.window(where, params)
        return info

    def kill_worker(self, cluster: Cluster, where: str, params: list, n: int) -> dict:
        target = max(1, int(n * self.args.kill_at))
        self.wait_runs(where, params, target, self.args.drain_timeout, "before the kill", 0.05)
        running_where = f"{where} AND status = 'running'"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (running,) = self.one(f"SELECT count(*) FROM {self.run_table} WHERE {running_where}",
                                  params)  # fmt: skip
            workers = cluster.workers()
            if running and workers:
                break
            time.sleep(0.005)
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.time()
        ok, _, _ = self.counts(where, params)
        say(f"  SIGKILL worker {victim} (workers {workers}) at {ok:,} of {n:,} succeeded, "
            f"{running} running")  # fmt: skip
        return {"killed": killed, "at": ok, "running": running}

    def part_e(self, api: Api, broker: str) -> None:
        n = self.args.kill_size
        say(f"(e) SIGKILL of a worker mid-batch, {n:,} runs ({broker})")
        normal = self.drain_batch(api, broker, n, kill=False)
        if not normal["done"]:
            self.rows.append({"figure": f"(e) recovery after SIGKILL [{broker}]",
                              "result": "the normal drain did not finish", "target": "<= +30 s",
                              "ok": False})  # fmt: skip
            return
        say(f"  normal drain: {secs(normal['window'])} ({n / normal['window']:,.0f} runs/s)")
        killed = self.drain_batch(api, broker, n, kill=True)
        if killed.get("first") is None:
            self.rows.append(
                {
                    "figure": f"(e) recovery after SIGKILL [{broker}]",
                    "result": "no run succeeded",
                    "target": "<= +30 s",
                    "ok": False,
                }
            )
            return
        expected_end = killed["first"] + normal["window"]
        (stranded,) = self.one(
            f"SELECT count(*) FROM {self.run_table} WHERE loop_id = %s AND "
            "(status <> 'succeeded' OR completed_at > to_timestamp(%s))",
            [self.loops["one"].pk, expected_end + 1],
        )
        if killed["done"]:
            beyond = killed["window"] - normal["window"]
            after_kill = killed["last"] - killed["killed"]
            result = f"+{secs(beyond)}"
        else:
            beyond = killed["after"] - killed["first"] - normal["window"]
            after_kill = killed["after"] - killed["killed"]
            result = f">= +{secs(beyond)}, {n - killed['succeeded']:,} runs never succeeded"
        say(f"  with the kill: drain {secs(killed['last'] - killed['first'])}, "
            f"kill -> all succeeded {secs(after_kill)}, beyond normal {secs(beyond)}; "
            f"about {stranded:,} runs finished after the normal drain would have ended")  # fmt: skip
        self.rows.append({
            "figure": f"(e) SIGKILL a worker mid-batch: drain beyond normal [{broker}]",
            "result": result,
            "anchor": f"normal drain {secs(normal['window'])}",
            "ratio": f"{(normal['window'] + beyond) / normal['window']:.1f}x",
            "target": "<= +30 s",
            "ok": killed["done"] and beyond <= 30,
        })  # fmt: skip
        self.rows.append({
            "figure": f"(e) (info) SIGKILL -> every run succeeded; runs late [{broker}]",
            "result": f"{secs(after_kill)}; {stranded:,} runs",
            "anchor": f"killed at {killed['at']:,} of {n:,}, {killed['running']} running",
            "target": "-", "ok": True,
        })  # fmt: skip
        self.delete_runs("loop_id = %s", [self.loops["one"].pk])

    # --- all of it

    def run(self) -> bool:
        args = self.args
        only = set(args.only)
        brokers = args.brokers
        for broker in dict.fromkeys([*brokers, *args.brokers_de]):
            if broker == "redis":
                self.connect_redis()
        order = list(dict.fromkeys([*brokers, *args.brokers_de]))
        for broker in order:
            parts = [p for p in "abc" if p in only and broker in brokers]
            parts += [p for p in "de" if p in only and broker in args.brokers_de]
            if not parts:
                continue
            self.purge_queues()
            server = Server(self.env(broker), args.gunicorn_workers)
            api = Api(server.base, self.token_a)
            try:
                if "a" in parts:
                    self.part_a(api, broker)
                if "b" in parts or "c" in parts:
                    self.purge_queues()
                    cluster = self.cluster(broker, "bc")
                    try:
                        self.warm_up(api)
                        if "b" in parts:
                            self.part_b(api, broker)
                        if "c" in parts:
                            self.part_c(api, broker)
                    finally:
                        cluster.stop()
                    self.delete_runs("organization_id = %s", [self.org_a.pk])
                if "d" in parts:
                    self.part_d(api, Api(server.base, self.token_b), broker)
                if "e" in parts:
                    self.part_e(api, broker)
            finally:
                server.stop()
        self.purge_queues()
        title = (
            f"engine throughput (issue 11), PostgreSQL {common.BENCH_URL.rsplit('/', 1)[-1]}, "
            f"LOOPS_WORKERS={args.workers}, {os.cpu_count()} cores"
        )
        return common.print_table(title, self.rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=PARTS, type=lambda s: s.replace(",", ""),
                        help="parts to run, e.g. a,b (default: all)")  # fmt: skip
    listing = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--brokers", type=listing, default=["orm", "redis"],
                        help="brokers for (a), (b), (c) (default orm,redis)")  # fmt: skip
    parser.add_argument("--brokers-de", type=listing, default=["orm"],
                        help="brokers for (d) and (e), the long ones (default orm)")  # fmt: skip
    parser.add_argument(
        "--database",
        default="loops_bench_throughput",
        help="database name on BENCH_DATABASE_URL's server (one of its own)",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13",
                        help="REDIS_URL of the Redis broker; a database number of the bench's "
                        "own, flushed between measurements")  # fmt: skip
    parser.add_argument("--queue", default="", help="LOOPS_QUEUE for the clusters (default unset)")
    parser.add_argument("--workers", type=int, default=2, help="LOOPS_WORKERS")
    parser.add_argument("--gunicorn-workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2000, help="(a) runs and tasks per drain")
    parser.add_argument("--repeat", type=int, default=1, help="(a) rounds (median)")
    parser.add_argument("--drain-timeout", type=float, default=600)
    parser.add_argument("--latency-runs", type=int, default=200, help="(b)")
    parser.add_argument("--timers", type=int, default=50, help="(c) sleeping runs")
    parser.add_argument("--sleep", type=float, default=2, help="(c) seconds")
    parser.add_argument("--timer-gap", type=float, default=0.7,
                        help="(c) mean seconds between the sleeping runs' triggers (random, "
                        "0.3x-1.7x): they fall at every point of a timer mechanism's cycle")  # fmt: skip
    parser.add_argument("--timer-timeout", type=float, default=180, help="(c)")

    parser.add_argument("--batch-size", type=int, default=100_000, help="(d)")
    parser.add_argument("--fair-runs", type=int, default=20, help="(d)")
    parser.add_argument("--fair-timeout", type=float, default=3600,

                        help="(d) seconds to wait for the other organization's runs")  # fmt: skip
    parser.add_argument("--kill-size", type=int, default=2000, help="(e) batch size")
    parser.add_argument("--kill-at", type=float, default=0.25, help="(e) fraction done")
    parser.add_argument("--kill-timeout", type=float, default=900, help="(e)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--helper", choices=["noop", "noop-saved", "stamp"], help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    if args.helper:
        return helper_main(args)
    unknown = set(args.only) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts: {sorted(unknown)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    say(f"engine_throughput: parts {args.only}, brokers {args.brokers} / (d, e) {args.brokers_de}")
    say(f"load average {common.load_average()}")
    common.setup(args.database)
    bench = Bench(args)
    bench.seed()
    try:
        ok = bench.run()
    finally:
        stop_all()
    say(f"done; load average {common.load_average()}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
