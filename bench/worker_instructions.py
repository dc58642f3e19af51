"""Instructions of the worker per run, counted by callgrind (issue 11, information).

Throughput moves with this shared machine's noise (±10 % from one minute to the next); the
instructions a process executes do not. A worker is driven in-process (`runs.engine.turns.work`,
the django-q2 task's own code, one lane) under `valgrind --tool=callgrind`, once draining
--small (50) and once --large (250) pending runs of a one-step loop; the difference divided by
the difference in runs is the worker's instructions per run: its claim, its conversation with
the sandbox, its writes, the ORM and psycopg. The sandbox and PostgreSQL are processes of their
own and are not counted (bench/engine_cpu.py splits the whole machine's CPU).

With --against REV, the same is counted for the worker of commit REV (its files taken out of
git into var/bench-engine-<REV>/, as bench/engine_cpu.py does), and the ratio printed.

Usage, from the repository root (needs valgrind: apt-get install -y valgrind; ~3 min a tree):
    .venv/bin/python bench/worker_instructions.py
    .venv/bin/python bench/worker_instructions.py --against HEAD~1
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# The code counted is that of BENCH_TREE (this checkout, or an earlier commit's files).
sys.path.insert(0, os.environ.get("BENCH_TREE", str(Path(__file__).resolve().parent.parent)))

from bench import common

DATABASE = "loops_bench_worker"
# Under callgrind the worker runs ~50 times slower than the sandbox and the database: the times
# it waits on them are lengthened so that it takes the paths it takes at full speed (the next
# message of an execution arrives within the hold; a turn lasts the whole drain).
SLOW_MOTION = {"LOOPS_STEP_HOLD_SECONDS": "10", "LOOPS_TURN_SECONDS": "3600"}
PROGRAM = "class Steps(Loop):\n    def run(self, event, step):\n        step.do('Step', lambda: 1)\n        return 1\n"  # fmt: skip


def drain(runs: int) -> None:
    """In the process callgrind watches: queue `runs` runs, then work until they are done."""
    common.setup(DATABASE)
    from django.db import connection

    from accounts.models import Organization
    from accounts.services import organization_create
    from loops.models import Loop
    from loops.services import loop_create
    from runs.engine import turns
    from runs.services import run_trigger_batch

    org = Organization.objects.filter(slug="bench-worker").first() or organization_create(
        slug="bench-worker"
    )
    loop = Loop.objects.filter(organization=org, slug="one").first() or loop_create(
        organization=org, slug="one", name="one", code=PROGRAM
    )
    with connection.cursor() as cursor:  # in SQL: the ORM's cascade would be counted
        run_ids = "SELECT id FROM runs_run WHERE organization_id = %s"
        cursor.execute(f"DELETE FROM runs_step WHERE run_id IN ({run_ids})", [org.pk])
        cursor.execute("DELETE FROM runs_run WHERE organization_id = %s", [org.pk])
        cursor.execute("DELETE FROM runs_batch WHERE organization_id = %s", [org.pk])
        cursor.execute("VACUUM (ANALYZE) runs_run, runs_step, runs_turn, runs_batch")
    run_trigger_batch(loop=loop, inputs=[{}] * 20, trigger_type="user")
    turns.work()  # the sandbox started, the program compiled, statements prepared
    run_trigger_batch(loop=loop, inputs=[{}] * runs, trigger_type="user")
    done = 0
    while done < runs:
        done += turns.work()


def instructions(tree: Path, runs: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "callgrind.out"
        result = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
             str(Path(__file__).resolve()), "--drain", str(runs)],
            cwd=tree, capture_output=True, text=True, check=True,
            env={**common.SERVER_ENV, **SLOW_MOTION, "BENCH_TREE": str(tree), "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
    collected = int(re.search(r"Collected : (\d+)", result.stderr).group(1))
    print(f"  {tree.name}: {runs} runs, {collected:,} instructions", flush=True)
    return collected


def per_run(tree: Path, small: int, large: int) -> float:
    instructions(tree, 1)  # Python compiles the tree's modules once: not counted
    return (instructions(tree, large) - instructions(tree, small)) / (large - small)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=50)
    parser.add_argument("--large", type=int, default=250)
    parser.add_argument("--against", help="a commit whose worker is counted the same way")
    parser.add_argument("--drain", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain is not None:
        drain(args.drain)
        return 0
    common.setup(DATABASE)  # created and migrated before callgrind's runs
    trees = {"now": common.BASE_DIR}
    if args.against:
        trees[args.against] = common.tree_of(args.against)
    found = {}
    for name, tree in trees.items():
        found[name] = per_run(tree, args.small, args.large)
        print(f"{name:>10s}: {found[name] / 1e6:.3f} million instructions of the worker per run")
    if args.against:
        print(f"now / {args.against}: {found['now'] / found[args.against]:.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
