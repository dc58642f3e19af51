import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # Playwright's sync API runs a loop

import httpx
import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.core.signals import request_finished
from django.db import connection
from django.test import TransactionTestCase, override_settings
from django_q.brokers import get_broker

from accounts.models import Role
from runs import dispatch, webhooks
from runs.models import Run, RunStatus
from tests.factories import (
    LoopFactory,
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
    make_token,
)

BASE_DIR = Path(__file__).resolve().parent.parent
(BASE_DIR / "var").mkdir(exist_ok=True)  # the SQLite test database and worker logs live here


@pytest.fixture(autouse=True, scope="session")
def _static_files_without_collectstatic():
    """Static files as in development: where they are, under their own names. The production
    storage (settings.STORAGES) names files from the manifest that `collectstatic` writes, and
    tests run with DEBUG off but without collectstatic; tests/test_static_files.py runs it and
    checks the production set-up over real HTTP."""
    storages = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    with override_settings(
        STORAGES=storages, WHITENOISE_USE_FINDERS=True, WHITENOISE_AUTOREFRESH=True
    ):
        yield


@pytest.fixture(autouse=True, scope="session")
def _flush_tried_again_after_a_deadlock():
    """A transactional test's data is flushed (one TRUNCATE of every table) while the session's
    worker cluster still runs its clock and webhook senders, whose statements take the same
    tables in another order: PostgreSQL may end the TRUNCATE as a deadlock's victim. It was
    rolled back whole, so it is tried again. (Nothing but tests truncates.)"""
    flush = TransactionTestCase._fixture_teardown

    def flush_tried_again(test_case, attempts=5):
        for attempt in range(attempts):
            try:
                return flush(test_case)
            except CommandError as error:
                if attempt == attempts - 1 or "deadlock detected" not in str(error.__cause__):
                    raise

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TransactionTestCase, "_fixture_teardown", flush_tried_again)
        yield


# --- people and organizations -------------------------------------------------------------


@pytest.fixture
def org(db):
    return OrganizationFactory(slug="acme", name="Acme")


@pytest.fixture
def other_org(db):
    return OrganizationFactory(slug="globex", name="Globex")


@pytest.fixture
def owner(org):
    return MembershipFactory(
        organization=org, role=Role.OWNER, user=UserFactory(username="olivia")
    ).user


@pytest.fixture
def owner_client(client, owner):
    """The Django test client, logged in as the organization's owner."""
    client.force_login(owner)
    return client


@pytest.fixture
def member(org):
    return MembershipFactory(
        organization=org, role=Role.EDITOR, user=UserFactory(username="mo")
    ).user


@pytest.fixture
def outsider(other_org):
    return MembershipFactory(
        organization=other_org, role=Role.OWNER, user=UserFactory(username="otto")
    ).user


@pytest.fixture
def loop(org):
    return LoopFactory(organization=org, slug="greeting", name="Greeting")


@pytest.fixture
def token(org) -> str:
    return make_token(org)


# --- real HTTP --------------------------------------------------------------------------------


@pytest.fixture
def api(live_server, token):
    """An HTTP client for the API of a live server, authenticated as the org's full token."""
    with httpx.Client(
        base_url=live_server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield client


@pytest.fixture
def anon_api(live_server):
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        yield client


# --- the real django-q2 worker -----------------------------------------------------------------


def database_url_for_subprocess() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    user = db.get("USER") or "postgres"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{host}:{port}/{db['NAME']}"


class Cluster:
    """A `manage.py qcluster` process on the test database."""

    def __init__(self, env_overrides: dict | None = None, args: tuple[str, ...] = ()):
        env = {
            **os.environ,
            "DATABASE_URL": database_url_for_subprocess(),
            "LOOPS_WORKERS": "2",
            "DJANGO_LOG_LEVEL": "WARNING",
            **(env_overrides or {}),
        }
        self.log_path = BASE_DIR / "var" / f"qcluster-{os.getpid()}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115
        self.log_start = self.log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, str(BASE_DIR / "manage.py"), "qcluster", *args],
            env=env, cwd=BASE_DIR, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        """What the log has had since this cluster started (the clusters of a test session
        share one log file)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["ps", "-o", "pid=,args=", "--ppid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        return [int(line.split()[0]) for line in out.splitlines() if line.strip()]

    def descendants(self) -> list[int]:
        """Every process below the qcluster process (sentinel, workers, their sandboxes)."""
        found, todo = [], [self.proc.pid]
        while todo:
            children = children_of(todo.pop())
            found += children
            todo += children
        return found

    def sandboxed_workers(self) -> list[int]:
        """The worker processes that have started a sandbox (their zygote's bubblewrap)."""
        return [
            pid for pid in self.descendants()
            if comm(pid) != "bwrap" and any(comm(child) == "bwrap" for child in children_of(pid))
        ]  # fmt: skip

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def send_due_deliveries() -> int:
    """What a cluster's webhook senders do (runs.senders), in this process: one attempt of
    every delivery of this queue that is due. Returns how many."""
    due = webhooks.due_deliveries(limit=1000, per_organization=1000)
    for delivery_id, _ in due:
        webhooks.deliver(delivery_id)
    return len(due)


@pytest.fixture
def senders_in_process():
    """After each request the server answers (the live server's, or the test client's), what
    is due is sent, as a cluster's senders would have by the next request."""

    def send(**_):
        send_due_deliveries()

    request_finished.connect(send, dispatch_uid="tests-senders-in-process")
    yield
    request_finished.disconnect(dispatch_uid="tests-senders-in-process")


def send_work_to(monkeypatch, queue: str, broker=None) -> None:
    """What this process queues (the live server's API included) goes to the clusters of
    `queue` (LOOPS_QUEUE): its runs, and the turns that wake their workers (through `broker`,
    the ORM broker of that queue unless given)."""
    broker = broker or get_broker(queue)
    monkeypatch.setattr(dispatch, "broker", lambda: broker)
    monkeypatch.setattr(dispatch, "queue_key", lambda: queue)


@pytest.fixture(scope="session")
def _session_cluster(django_db_setup, django_db_blocker):
    # On a queue of its own: only tests that ask for `worker` send it work, so it never runs
    # another test's leftovers while that test's data is being flushed.
    queue_name = f"test-worker-{os.getpid()}"
    with django_db_blocker.unblock():
        cluster = Cluster({"LOOPS_QUEUE": queue_name})
        try:
            cluster.broker = get_broker(queue_name)
            cluster.queue = queue_name
        except BaseException:
            cluster.stop()
            raise
    yield cluster
    cluster.stop()


@pytest.fixture
def worker(_session_cluster, transactional_db, monkeypatch):
    """The real django-q2 worker cluster (shared by the session) on the test database; what
    this test queues goes to it. When the test ends, its data is flushed only once the cluster
    is quiet: a TRUNCATE beside a worker's statement can deadlock (a run the test resumed at
    its very end was still running)."""
    assert _session_cluster.proc.poll() is None, "the qcluster process died"
    send_work_to(monkeypatch, _session_cluster.queue, _session_cluster.broker)
    yield _session_cluster
    Run.objects.filter(status=RunStatus.PENDING).update(status=RunStatus.CANCELLED)
    quiet = []

    def settled() -> bool:
        busy = _session_cluster.broker.queue_size() or _busy_sessions()
        quiet[:] = [] if busy else [*quiet, True]
        return len(quiet) >= 3

    wait_until(settled, timeout=60)


def _busy_sessions() -> int:
    """Other sessions on the test database in a statement or a transaction (PostgreSQL)."""
    if connection.vendor != "postgresql":
        return 0
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state IN ('active', 'idle in transaction')"
        )
        return cursor.fetchone()[0]


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def children_of(pid: int) -> list[int]:
    """The children of every thread of the process (each lane of a worker is a thread, and
    starts its sandbox itself)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += map(int, (task / "children").read_text().split())
    return found


def is_sandbox(pid: int) -> bool:
    """A zygote (or an execution forked from one, which has its command line), or the
    bubblewrap around it."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return comm(pid) == "bwrap" or any(arg.endswith(b"zygote.py") for arg in args)


def zygotes_of(pid: int) -> list[int]:
    """The zygotes a worker started, under bubblewrap (worker → bwrap → bwrap → zygote) or not
    (worker → zygote); their children are its executions."""
    found, todo = [], children_of(pid)
    while todo:
        child = todo.pop()
        if comm(child) == "bwrap":
            todo += children_of(child)
        elif is_sandbox(child):
            found.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll until predicate() is truthy; fail with a clear message after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- browser ------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


def pytest_collection_modifyitems(config, items):
    if CHROMIUM or os.environ.get("CI"):
        return  # in CI a missing Chromium must fail, never skip
    skip = pytest.mark.skip(reason="Chromium is not installed (apt-get install chromium)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fast_settings(settings):
    settings.LOOPS_WEBHOOK_RETRY_BASE_SECONDS = 1
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
