"""Where a run's CPU goes, across every process of the machine (issue 11, information).

--runs (1,500) pending runs of a loop are made through the service, then a `manage.py qcluster`
with LOOPS_WORKERS=--workers (2) drains them. The script reads /proc before and after: the
machine's busy time (all cores, /proc/stat) divided by the runs is the cost of one run; the
split is per process name, with the CPU of processes that ended reaped into their parent's
"children" counters (the sealed executions are counted in the zygote's children: PID 1 of each
execution). What no live process accounts for is the kernel's own work (e.g. tearing down
namespaces) and processes of this script's polling.

With --against REV, the same drain is made alternately by this checkout's cluster and by the
cluster of commit REV (its files taken out of git into var/bench-engine-<REV>/, run with this
checkout's interpreter and database), --rounds (3) times each, and the medians are printed side
by side with their ratio: the machine's noise falls on both.

Usage, from the repository root (BENCH_DATABASE_URL as for the other scripts):
    .venv/bin/python bench/engine_cpu.py                  # one-step loop
    .venv/bin/python bench/engine_cpu.py --steps 0 --runs 3000
    .venv/bin/python bench/engine_cpu.py --via trigger      # runs made one by one
    .venv/bin/python bench/engine_cpu.py --against HEAD --rounds 3
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

HZ = common.CLOCK_TICKS
VACUUMED = ("runs_run", "runs_step", "runs_logentry", "runs_turn", "runs_timer", "django_q_ormq",
            "django_q_task")  # fmt: skip


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (name, own CPU ticks, reaped children's CPU ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (name, int(fields[11]) + int(fields[12]),
                                  int(fields[13]) + int(fields[14]))  # fmt: skip
    return found


def drain(args, loop, tree: Path) -> dict:
    """Queue --runs runs, drain them with a cluster started in `tree`; the machine's CPU per
    run, split by process name, and the rate."""
    from django.db import connection

    from runs.models import Run
    from runs.services import run_trigger, run_trigger_batch

    Run.objects.filter(loop=loop).delete()
    # This machine's PostgreSQL runs without autovacuum (conf.d/90-ci.conf): every drain starts
    # from tables without the dead rows of the ones before.
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {', '.join(VACUUMED)}")
    if args.via == "batch":
        run_trigger_batch(loop=loop, inputs=[{}] * args.runs, trigger_type="user")
    else:
        for _ in range(args.runs):
            run_trigger(loop=loop, input={}, trigger_type="api_token")
    runs = Run.objects.filter(loop=loop)

    env = {**os.environ, "LOOPS_WORKERS": str(args.workers), "DJANGO_LOG_LEVEL": "WARNING"}
    before, busy_before = processes(), common.machine_busy_ticks()
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=tree, env=env,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started = time.monotonic()
    try:
        while runs.filter(status="succeeded").count() < args.runs:
            if time.monotonic() - started > 900:
                raise SystemExit("the runs did not drain in 15 minutes")
            if cluster.poll() is not None:
                raise SystemExit(f"the cluster of {tree} stopped")
            time.sleep(0.5)
        wall = time.monotonic() - started
        after, busy_after = processes(), common.machine_busy_ticks()
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait()
    runs.delete()
    per_run = lambda ticks: ticks / HZ / args.runs * 1000  # noqa: E731 - ms per run
    split: dict[str, float] = {}
    for pid, (name, own, children) in after.items():
        _, own_before, children_before = before.get(pid, (name, 0, 0))
        split[name] = split.get(name, 0) + per_run(own - own_before)
        split[f"{name} (children)"] = split.get(f"{name} (children)", 0) + per_run(
            children - children_before
        )
    return {"total": per_run(busy_after - busy_before), "rate": args.runs / wall, "split": split}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--via",
        choices=["batch", "trigger"],
        default="batch",
        help="the runs are made by one batch, or one by one like triggers",
    )
    parser.add_argument("--against", help="a commit whose cluster drains the same runs in turn")
    parser.add_argument("--rounds", type=int, default=3, help="with --against: rounds of each")
    args = parser.parse_args()
    common.setup("loops_bench_cpu")
    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from loops.services import loop_create

    org = Organization.objects.filter(slug="bench-cpu").first() or organization_create(
        slug="bench-cpu"
    )
    slug = f"steps-{args.steps}"
    code = (
        "class Steps(Loop):\n    def run(self, event, step):\n"
        f"        for i in range({args.steps}):\n"
        "            step.do('Step', lambda i=i: {'i': i})\n"
        "        return 1\n"
    )
    loop = Loop.objects.filter(organization=org, slug=slug).first() or loop_create(
        organization=org, slug=slug, name=slug, code=code
    )
    print(f"{args.runs:,} runs of {args.steps} step(s) by {args.via}, "
          f"LOOPS_WORKERS={args.workers}, {os.cpu_count()} cores")  # fmt: skip

    if args.against:
        trees = {"now": common.BASE_DIR, args.against: common.tree_of(args.against)}
        found: dict[str, list[dict]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                result = drain(args, loop, tree)
                found[name].append(result)
                print(f"  round {round_ + 1} {name:>10s}: {result['total']:.2f} ms of the "
                      f"machine per run, {result['rate']:,.0f} runs/s")  # fmt: skip
        medians = {
            name: tuple(statistics.median(r[key] for r in results) for key in ("total", "rate"))
            for name, results in found.items()
        }
        for name, (total, rate) in medians.items():
            print(f"{name:>10s}: {total:.2f} ms per run, {rate:,.0f} runs/s (medians)")
        ratio = medians["now"][0] / medians[args.against][0]
        print(f"now / {args.against}: {ratio:.2f}x of the machine's CPU per run")
        return 0

    result = drain(args, loop, common.BASE_DIR)
    print(f"{result['rate']:,.0f} runs/s (including start-up)")
    print(f"machine CPU per run: {result['total']:.2f} ms")
    for name, ms in sorted(result["split"].items(), key=lambda item: -item[1])[:8]:
        if ms > 0:
            print(f"  {name:32s} {ms:6.2f} ms")
    print("(python3.12 (children): the sealed executions; python: the workers and this script;"
          " postgres: the database's backends)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
