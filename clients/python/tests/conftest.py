"""A live Loops server for the client's tests: this repository's own, started for the session.

On a scratch SQLite database (or the database of LOOPS_CLIENT_TEST_DATABASE_URL, which must be
an empty one of its own): `manage.py migrate`, an organization, a `full` and a `trigger` token
and the loops of PROGRAMS through the management commands, then gunicorn and a
`manage.py qcluster` worker cluster on a queue of its own. Everything started is stopped at the
end of the session, and dies with the test process if that is killed.
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
ORG = "client-tests"

# The loops the tests run, deployed by slug with `manage.py deploy`.
PROGRAMS = {
    "greet": """
class Greet(Loop):
    def run(self, event, step):
        if event.body.get("fail"):
            raise ValueError("asked to fail")
        greeting = step.do("Greet", lambda: f"Hello, {event.body.get('name')}!")
        return {"greeting": greeting}
""",
    "review": """
class Review(Loop):
    def run(self, event, step):
        note = step.ask("Note", "Anything to add?")
        decision = step.approve(
            "Ship", "Ship it?", tool="ship", tool_input={"note": note}, on_reject="return"
        )
        return {"note": note, "approved": decision["approved"], "reason": decision["reason"]}
""",
    # Waits for an event; without one it fails after 30 s, so that a poll that never times
    # out still ends (and its test fails) instead of hanging.
    "listen": """
class Listen(Loop):
    def run(self, event, step):
        return {"got": step.wait_for_event("Wait", "go", timeout=30)}
""",
}


@dataclass(frozen=True)
class Server:
    url: str
    token: str  # scope full
    trigger_token: str  # scope trigger
    env: dict[str, str]


def _die_with_parent() -> None:
    # In the child, before exec: SIGKILL when the test process ends, however it ends.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def manage(env: dict[str, str], *args: str) -> str:
    """Run a management command of the server; its output (it must succeed)."""
    result = subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def start(args: list[str], env: dict[str, str], log: Path, **kwargs) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent, **kwargs,
        )  # fmt: skip


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process's group (its workers too), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def gunicorn(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """gunicorn on a socket bound here, so its port is known and never taken meanwhile; live
    triggers hold a thread each, hence threads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    proc = start(
        [sys.executable, "-m", "gunicorn", "loops_project.wsgi", "-w", "1", "-k", "gthread",
         "--threads", "8", "-b", f"fd://{listener.fileno()}", "--log-level", "warning"],
        env, log, pass_fds=[listener.fileno()],
    )  # fmt: skip
    listener.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/api/openapi.json", timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"gunicorn did not answer; see {log}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def server_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    scratch = tmp_path_factory.mktemp("server")
    env = {
        key: value
        for key, value in os.environ.items()
        # The scratch server's own: no shared cache or broker, no test settings of a caller.
        if key not in {"REDIS_URL", "DJANGO_SETTINGS_MODULE", "PYTEST_XDIST_WORKER"}
    }
    env.update(
        DATABASE_URL=os.environ.get(
            "LOOPS_CLIENT_TEST_DATABASE_URL", f"sqlite:///{scratch / 'loops.sqlite3'}"
        ),
        LOOPS_QUEUE=f"client-tests-{uuid.uuid4().hex[:8]}",
        LOOPS_WORKERS="2",
        DJANGO_LOG_LEVEL="WARNING",
        LOOPS_CLIENT_TEST_LOGS=str(scratch),
    )
    return env


@pytest.fixture(scope="session")
def server(server_env: dict[str, str]) -> Iterator[Server]:
    env = server_env
    logs = Path(env["LOOPS_CLIENT_TEST_LOGS"])
    manage(env, "migrate", "--noinput", "-v0")
    manage(env, "create_org", ORG, "--name", "Client tests")
    full = manage(env, "create_token", ORG, "--name", "client-full").splitlines()[-1]
    trigger = manage(env, "create_token", ORG, "--name", "client-trigger", "--scope", "trigger")
    for slug, code in PROGRAMS.items():
        program = logs / f"{slug}.py"
        program.write_text(code)
        manage(env, "deploy", ORG, slug, str(program))
    cluster = start(
        [sys.executable, str(REPO / "manage.py"), "qcluster"], env, logs / "qcluster.log"
    )
    try:
        web, url = gunicorn(env, logs / "gunicorn.log")
    except BaseException:
        stop(cluster)
        raise
    try:
        yield Server(url, full.strip(), trigger.splitlines()[-1].strip(), env)
    finally:
        stop(web)
        stop(cluster)


class CountingTransport(httpx.BaseTransport):
    """A real transport that keeps each request's method, path and time of sending."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[tuple[str, str, float]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((request.method, request.url.path, time.monotonic()))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()

    def count(self, method: str, path: str) -> int:
        return sum(1 for m, p, _ in self.sent if m == method and p == path)


@pytest.fixture
def rate_limited_url(server: Server) -> Iterator[str]:
    """A second web server on the session's database whose tokens may make 3 requests an
    hour (a window that a test never straddles)."""
    env = {**server.env, "LOOPS_API_RATE": "3/h"}
    proc, url = gunicorn(env, Path(env["LOOPS_CLIENT_TEST_LOGS"]) / "gunicorn-limited.log")
    try:
        yield url
    finally:
        stop(proc)
