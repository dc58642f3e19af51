"""Where a run's CPU goes, across every process of the machine (issue 11, information).

--runs (1,500) pending runs of a loop are made through the service, then a `manage.py qcluster`
with LOOPS_WORKERS=--workers (2) drains them. The script reads /proc before and after: the
machine's busy time (all cores, /proc/stat) divided by the runs is the cost of one run; the
split is per process name, with the CPU of processes that ended reaped into their parent's
"children" counters (the sealed executions are counted in the zygote's children: a middle
process and PID 1 per execution). What no live process accounts for is the kernel's own work
(e.g. tearing down namespaces) and processes of this script's polling.

Usage, from the repository root (BENCH_DATABASE_URL as for the other scripts):
    .venv/bin/python bench/engine_cpu.py                  # one-step loop
    .venv/bin/python bench/engine_cpu.py --steps 0 --runs 3000
    .venv/bin/python bench/engine_cpu.py --via trigger      # runs made one by one
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common

HZ = common.CLOCK_TICKS


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
    args = parser.parse_args()
    common.setup("loops_bench_cpu")
    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from loops.services import loop_create
    from runs.models import Run
    from runs.services import run_trigger, run_trigger_batch

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
    Run.objects.filter(organization=org).delete()
    if args.via == "batch":
        run_trigger_batch(loop=loop, inputs=[{}] * args.runs, trigger_type="user")
    else:
        for _ in range(args.runs):
            run_trigger(loop=loop, input={}, trigger_type="api_token")
    runs = Run.objects.filter(loop=loop)

    env = {**os.environ, "LOOPS_WORKERS": str(args.workers), "DJANGO_LOG_LEVEL": "WARNING"}
    before, busy_before = processes(), common.machine_busy_ticks()
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"], cwd=common.BASE_DIR, env=env,
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started = time.monotonic()
    try:
        while runs.filter(status="succeeded").count() < args.runs:
            if time.monotonic() - started > 900:
                raise SystemExit("the runs did not drain in 15 minutes")
            time.sleep(0.5)
        wall = time.monotonic() - started
        after, busy_after = processes(), common.machine_busy_ticks()
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        cluster.wait()
    per_run = lambda ticks: ticks / HZ / args.runs * 1000  # noqa: E731 - ms per run
    split: dict[str, int] = {}
    for pid, (name, own, children) in after.items():
        _, own_before, children_before = before.get(pid, (name, 0, 0))
        split[name] = split.get(name, 0) + own - own_before
        split[f"{name} (children)"] = (
            split.get(f"{name} (children)", 0) + children - children_before
        )
    total = busy_after - busy_before
    print(f"{args.runs:,} runs of {args.steps} step(s) by {args.via}, LOOPS_WORKERS={args.workers}, "
          f"{os.cpu_count()} cores: {args.runs / wall:,.0f} runs/s (including start-up)")  # fmt: skip
    print(f"machine CPU per run: {per_run(total):.2f} ms")
    for name, ticks in sorted(split.items(), key=lambda item: -item[1])[:8]:
        if ticks > 0:
            print(f"  {name:32s} {per_run(ticks):6.2f} ms")
    print("(python3.12 (children): the sealed executions; python: the workers and this script;"
          " postgres: the database's backends)")  # fmt: skip
    runs.delete()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
