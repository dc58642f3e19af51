"""The machine's CPU per sealed execution, now and as of an earlier commit, in the same run.

One execution after another (the greeting loop, compiled once, through a zygote under
bubblewrap with every layer), --runs (500) a round, --rounds (3) alternating between the
sandbox of this checkout and the sandbox of --against (default ccbafa0, the last commit with a
middle process between the zygote and PID 1), whose files are taken out of git into
var/bench-sandbox-<commit>/. Each figure is the CPU of the zygote and of every process it made
(reaped into its children's counters), per execution; beside it, the worker's own CPU and the
whole machine's busy time (/proc/stat, all cores) per execution. Medians of the rounds.

Usage, from the repository root:
    .venv/bin/python bench/sandbox_cpu.py
    .venv/bin/python bench/sandbox_cpu.py --against HEAD~3 --runs 300
"""

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "loops_project.settings")
os.environ.setdefault("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'bench.sqlite3'}")

import django  # noqa: E402

django.setup()

from bench import common  # noqa: E402
from loops.demo import GREETING_CODE  # noqa: E402
from runs.engine.programs import compiled_program  # noqa: E402
from runs.engine.zygote_client import Zygote  # noqa: E402

HZ = common.CLOCK_TICKS
LIMITS = {"wall_seconds": 10, "cpu_seconds": 5, "memory_mb": 512, "max_processes": 1}


def machine_busy() -> float:
    return common.machine_busy_ticks() / HZ


def subtree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and of every process it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / HZ


def zygote_pid(zygote: Zygote) -> int:
    """The zygote's python, below bubblewrap's two processes."""
    pid = zygote.proc.pid
    while Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap":
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return pid


def zygote_as_of(commit: str) -> Zygote:
    """The worker side and the sandbox of `commit`, out of git, beside this checkout's."""
    root = BASE_DIR / "var" / f"bench-sandbox-{commit.replace('/', '_').replace('~', '-')}"
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", commit, "runs/engine/sandbox/"],
        cwd=BASE_DIR, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for name in [*names, "runs/engine/zygote_client.py"]:
        target = root / Path(name).relative_to("runs")
        target.parent.mkdir(parents=True, exist_ok=True)
        shown = subprocess.run(
            ["git", "show", f"{commit}:{name}"], cwd=BASE_DIR, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        target.write_text(shown.stdout)
    spec = importlib.util.spec_from_file_location(
        "zygote_client_then", root / "engine" / "zygote_client.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Zygote()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", default="ccbafa0")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    program = compiled_program(organization_id="org_bench", code=GREETING_CODE)
    request = {"op": "exec", "code": GREETING_CODE, "program": program, "guards": True,
               "event": {"body": {"name": "Khaya"}, "attempt": 1}, "saved": {}, "limits": {}}  # fmt: skip

    def reply(message, size=0):
        return {"ok": True} if message["op"] == "step" else None

    zygotes = {"now": Zygote(), args.against: zygote_as_of(args.against)}
    for zygote in zygotes.values():
        zygote.start()
    if zygotes["now"].mode != "bwrap":
        print("bubblewrap is not working here: the figures would not be the product's")
        return 1

    def execute(zygote: Zygote) -> None:
        info = zygote.execute(request, reply, limits=LIMITS, deadline=time.monotonic() + 10)
        if info.code != 0 or info.crashed:
            raise SystemExit(f"an execution failed: {info}")

    found = {name: {"sandbox": [], "worker": [], "machine": []} for name in zygotes}
    try:
        for zygote in zygotes.values():
            for _ in range(30):  # warm
                execute(zygote)
        for _ in range(args.rounds):
            for name, zygote in zygotes.items():
                pid = zygote_pid(zygote)
                sandbox, worker, machine = subtree_cpu(pid), time.process_time(), machine_busy()
                for _ in range(args.runs):
                    execute(zygote)
                per_run = lambda before, after: (after - before) / args.runs * 1000  # noqa: E731
                found[name]["sandbox"].append(per_run(sandbox, subtree_cpu(pid)))
                found[name]["worker"].append(per_run(worker, time.process_time()))
                found[name]["machine"].append(per_run(machine, machine_busy()))
    finally:
        for zygote in zygotes.values():
            zygote.stop()

    median = {name: {k: statistics.median(v) for k, v in f.items()} for name, f in found.items()}
    print(f"CPU per sealed execution, ms, median of {args.rounds} rounds of {args.runs}")
    print(f"{'sandbox':12s} {'zygote+executions':>18s} {'worker':>8s} {'machine':>8s}")
    for name, m in median.items():
        print(f"{name:12s} {m['sandbox']:18.2f} {m['worker']:8.2f} {m['machine']:8.2f}")
    ratio = median["now"]["machine"] / median[args.against]["machine"]
    print(f"now / {args.against}: {ratio:.2f}x of the machine's CPU per execution")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
