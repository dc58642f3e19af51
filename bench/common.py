"""Shared set-up for the benchmarks: a dedicated PostgreSQL database, Django, seed data, tables.

Every script is run as `.venv/bin/python bench/<name>.py`. The database is BENCH_DATABASE_URL
(default postgres://postgres@127.0.0.1:5432/loops_bench); it is created when missing, migrated,
and used for nothing else.
"""

import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

BASE_DIR = Path(__file__).resolve().parent.parent
BENCH_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/loops_bench")
# Production-like settings for the bench process and any server it starts.
SERVER_ENV = {
    "DATABASE_URL": BENCH_URL,
    "DJANGO_SETTINGS_MODULE": "loops_project.settings",
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": "bench-secret-key-not-for-production-0123456789abcdefghijklmnop",
    "DJANGO_SECURE_SSL_REDIRECT": "0",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
    "DJANGO_LOG_LEVEL": "ERROR",
}


def ensure_database() -> None:
    import psycopg

    url = urlparse(BENCH_URL)
    name = url.path.lstrip("/")
    admin = url._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def setup(database: str | None = None) -> None:
    """Create and migrate the bench database, then set up Django on it.

    `database` replaces the database name of BENCH_DATABASE_URL (a script whose figures must
    not depend on what another script left in the tables uses a database of its own).
    """
    global BENCH_URL
    if database:
        BENCH_URL = urlparse(BENCH_URL)._replace(path=f"/{database}").geturl()
        SERVER_ENV["DATABASE_URL"] = BENCH_URL
    os.environ.update(SERVER_ENV)
    sys.path.insert(0, str(BASE_DIR))
    ensure_database()
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def seed(slug: str = "bench", loop_slug: str = "greeting"):
    """An organization, a full-scope token and a deployed loop, made through the services.

    Returns (org, loop, raw_token). Re-running reuses the org and loop and makes a new token.
    """
    from accounts.models import Organization
    from accounts.services import organization_create, token_create
    from loops.demo import GREETING_CODE
    from loops.models import Loop
    from loops.services import loop_create

    org = Organization.objects.filter(slug=slug).first() or organization_create(slug=slug)
    loop = Loop.objects.filter(organization=org, slug=loop_slug).first()
    if loop is None:
        loop = loop_create(organization=org, slug=loop_slug, name=loop_slug, code=GREETING_CODE)
    loop = Loop.objects.select_related("active_version").get(pk=loop.pk)
    _, raw = token_create(organization=org, name=f"bench {time.time():.0f}")
    return org, loop, raw


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # per second, as /proc counts CPU time


def machine_busy_ticks() -> int:
    """The machine's busy CPU time so far, all cores: all of /proc/stat but idle and iowait."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4]


def tree_of(rev: str) -> Path:
    """The files of commit `rev`, out of git into var/bench-engine-<commit>/ (made once per
    commit), for a benchmark that runs an earlier commit's code beside this checkout's."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=BASE_DIR,
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    root = BASE_DIR / "var" / f"bench-engine-{commit}"
    if not (root / "manage.py").exists():
        root.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=BASE_DIR, capture_output=True,
                                 check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def psycopg_dsn() -> str:
    return BENCH_URL


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_table(title: str, rows: list[dict]) -> bool:
    """rows: figure, result, anchor, ratio, target, ok. Returns True when all pass."""
    headers = ["figure", "result", "anchor", "ratio", "target", "verdict"]
    lines = [
        [
            r["figure"],
            r["result"],
            r.get("anchor", "-"),
            r.get("ratio", "-"),
            r["target"],
            "PASS" if r["ok"] else "FAIL",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *lines, strict=True)]
    print()
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))
    return all(r["ok"] for r in rows)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def collect_static() -> None:
    """`manage.py collectstatic` into STATIC_ROOT (var/staticfiles), once per bench process: with
    DJANGO_DEBUG=0 pages name their static files from its manifest, and WhiteNoise serves them."""
    import subprocess

    subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), "collectstatic", "--noinput", "-v0"],
        cwd=BASE_DIR, env={**os.environ, **SERVER_ENV}, check=True,
    )  # fmt: skip


def start_gunicorn(
    workers: int = 4, port: int | None = None, extra: list[str] | None = None,
    env: dict | None = None,
):  # fmt: skip
    """gunicorn on loopback with the bench settings; returns (process, base_url).

    `env` is the server's whole environment (default: this process's, with SERVER_ENV)."""
    import subprocess

    import httpx

    collect_static()
    port = port or free_port()
    env = {**os.environ, **SERVER_ENV} if env is None else env
    cmd = [
        str(BASE_DIR / ".venv" / "bin" / "gunicorn"),
        "loops_project.wsgi",
        "-w",
        str(workers),
        "-b",
        f"127.0.0.1:{port}",
        "--timeout",
        "300",
        "--log-level",
        "warning",
        *(extra or []),
    ]
    (BASE_DIR / "var").mkdir(exist_ok=True)
    log = open(BASE_DIR / "var" / "bench-gunicorn.log", "a")  # noqa: SIM115 - lives with proc
    proc = subprocess.Popen(cmd, cwd=BASE_DIR, env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base}/api/openapi.json", timeout=2)
            return proc, base
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise RuntimeError("gunicorn exited") from None
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("gunicorn did not start")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except Exception:
        proc.kill()
        proc.wait()
