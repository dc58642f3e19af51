"""The management commands of API.md, called as a person would call them."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from accounts.models import ApiToken, AuditEvent, Membership, Organization, Role
from accounts.services import token_authenticate
from loops.models import Loop, LoopVersion
from runs.models import Run, RunStatus
from tests.conftest import BASE_DIR, alive, wait_until
from tests.factories import LoopFactory, RunFactory, UserFactory

pytestmark = pytest.mark.django_db

CODE_V2 = """\
class HealthLoop(Loop):
    def run(self, event, step):
        return {"greeting": step.do("Build greeting v2", lambda: "Hi")}
"""

SYNTAX_ERROR = """\
class HealthLoop(Loop):
    def run(self, event, step)
        return {}
"""


def call(*args) -> str:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    assert err.getvalue() == ""
    return out.getvalue()


@pytest.fixture
def code_file(tmp_path):
    def write(code: str, name: str = "loop.py"):
        path = tmp_path / name
        path.write_text(code)
        return str(path)

    return write


# --- create_org ---------------------------------------------------------------------------------


def test_create_org_with_an_owner(db):
    UserFactory(username="nomsa")
    out = call("create_org", "umoya", "--name", "Umoya Health", "--owner", "nomsa")
    org = Organization.objects.get(slug="umoya")
    assert out == f"Created organization umoya ({org.pk})\n"
    assert org.name == "Umoya Health"
    assert Membership.objects.get(organization=org).user.username == "nomsa"
    assert Membership.objects.get(organization=org).role == Role.OWNER


def test_create_org_without_a_name_uses_the_slug(db):
    call("create_org", "solo")
    org = Organization.objects.get(slug="solo")
    assert org.name == "solo"
    assert not org.memberships.exists()


@pytest.mark.parametrize("slug", ["Not A Slug", "under_score!", "UPPER"])
def test_create_org_refuses_a_bad_slug(db, slug):
    with pytest.raises(CommandError, match="is not a valid slug"):
        call("create_org", slug)
    assert not Organization.objects.exists()


def test_create_org_refuses_a_slug_or_name_too_long_to_store(db):
    with pytest.raises(CommandError, match="slug is longer than 64 characters"):
        call("create_org", "a" * 65)
    with pytest.raises(CommandError, match="name is longer than 200 characters"):
        call("create_org", "fine", "--name", "N" * 201)
    assert not Organization.objects.exists()


def test_create_org_refuses_a_duplicate_and_an_unknown_owner(org):
    with pytest.raises(CommandError, match="slug 'acme' already exists"):
        call("create_org", "acme")
    with pytest.raises(CommandError, match="No user named 'ghost'"):
        call("create_org", "newco", "--owner", "ghost")
    assert list(Organization.objects.values_list("slug", flat=True)) == ["acme"]


# --- create_token -------------------------------------------------------------------------------


def test_create_token_prints_the_token_alone_on_the_last_line_and_it_authenticates(org):
    out = call("create_token", "acme", "--name", "deploys", "--scope", "trigger")
    raw = out.splitlines()[-1]
    assert raw.startswith("lp_")
    assert " " not in raw
    token = token_authenticate(raw)
    assert token is not None
    assert token.organization == org
    assert (token.name, token.scope) == ("deploys", "trigger")
    assert token.token_hash == ApiToken.hash(raw)
    assert "shown only once" in out.splitlines()[0]


def test_create_token_by_org_id_defaults_to_full_scope(org):
    raw = call("create_token", org.pk).splitlines()[-1]
    assert token_authenticate(raw).scope == "full"


def test_create_token_for_an_unknown_org_or_with_a_bad_name_fails(org):
    with pytest.raises(CommandError, match="No organization 'nowhere'"):
        call("create_token", "nowhere")
    with pytest.raises(CommandError, match="--name must not be empty"):
        call("create_token", "acme", "--name", "  ")
    with pytest.raises(CommandError, match="--name is longer than 100 characters"):
        call("create_token", "acme", "--name", "n" * 101)
    assert not ApiToken.objects.exists()


# --- deploy -------------------------------------------------------------------------------------


def test_deploy_creates_the_loop_then_adds_versions(org, code_file):
    assert call("deploy", "acme", "greeting", code_file(CODE_V2), "--note", "first") == "1\n"
    loop = Loop.objects.get(organization=org, slug="greeting")
    assert loop.active_version.number == 1
    assert loop.active_version.note == "first"
    assert loop.active_version.code == CODE_V2
    assert call("deploy", "acme", "greeting", code_file(CODE_V2 + "\n")) == "2\n"
    loop.refresh_from_db()
    assert loop.active_version.number == 2
    assert loop.versions.count() == 2


def test_deploy_to_an_existing_loop_by_id(loop, code_file):
    assert call("deploy", "acme", loop.pk, code_file(CODE_V2)) == "2\n"


def test_deploy_with_a_syntax_error_names_the_line_and_saves_nothing(org, code_file):
    with pytest.raises(CommandError, match="Line 2: syntax error"):
        call("deploy", "acme", "broken", code_file(SYNTAX_ERROR))
    assert not Loop.objects.exists()
    assert not LoopVersion.objects.exists()


def test_deploy_with_a_syntax_error_keeps_the_active_version(loop, code_file):
    with pytest.raises(CommandError, match="Line 2"):
        call("deploy", "acme", "greeting", code_file(SYNTAX_ERROR))
    loop.refresh_from_db()
    assert loop.active_version.number == 1
    assert loop.versions.count() == 1


def test_deploy_refuses_a_missing_file_an_unknown_id_and_a_bad_slug(org, code_file, tmp_path):
    latin1 = tmp_path / "latin1.py"
    latin1.write_bytes("# café\n".encode("latin-1"))
    with pytest.raises(CommandError, match="No such file"):
        call("deploy", "acme", "greeting", "/nonexistent/loop.py")
    with pytest.raises(CommandError, match="No loop 'loop_nothing'"):
        call("deploy", "acme", "loop_nothing", code_file(CODE_V2))
    with pytest.raises(CommandError, match="lower-case letters, digits and hyphens"):
        call("deploy", "acme", "Bad Slug", code_file(CODE_V2))
    with pytest.raises(CommandError, match="slug is longer than 64 characters"):
        call("deploy", "acme", "x" * 65, code_file(CODE_V2))
    with pytest.raises(CommandError, match="Cannot read"):
        call("deploy", "acme", "latin", str(latin1))
    assert not Loop.objects.exists()


# --- rollback -----------------------------------------------------------------------------------


def test_rollback_makes_an_earlier_version_active(loop, code_file):
    call("deploy", "acme", "greeting", code_file(CODE_V2))
    assert call("rollback", "acme", "greeting", "1") == "Loop greeting now runs version 1\n"
    loop.refresh_from_db()
    assert loop.active_version.number == 1
    assert loop.versions.count() == 2


def test_rollback_to_an_unknown_version_or_loop_fails(loop):
    with pytest.raises(CommandError, match="has no version 7"):
        call("rollback", "acme", "greeting", "7")
    with pytest.raises(CommandError, match="No loop 'nope'"):
        call("rollback", "acme", "nope", "1")
    loop.refresh_from_db()
    assert loop.active_version.number == 1


# --- trigger ------------------------------------------------------------------------------------


def test_trigger_prints_the_run_id(loop):
    out = call("trigger", "acme", "greeting", "--input", '{"name": "Thandi"}')
    run = Run.objects.get()
    assert out == f"{run.pk}\n"
    assert run.input == {"name": "Thandi"}
    assert run.trigger_type == "user"
    assert run.status == RunStatus.PENDING
    assert run.version == loop.active_version


def test_trigger_refuses_bad_json_and_a_paused_loop(loop):
    for bad in ("{name: 1}", '{"n": NaN}', '{"n": Infinity}', '{"s": "a\\u0000b"}'):
        with pytest.raises(CommandError, match="--input is not valid JSON"):
            call("trigger", "acme", "greeting", "--input", bad)
    Loop.objects.filter(pk=loop.pk).update(paused=True)
    with pytest.raises(CommandError, match="Loop 'greeting' is paused"):
        call("trigger", "acme", "greeting")
    assert not Run.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_trigger_wait_prints_the_ended_run_as_json(worker, loop):
    out = call("trigger", "acme", "greeting", "--input", '{"name": "Sipho"}', "--wait",
               "--timeout", "60")  # fmt: skip
    run_id, _, body = out.partition("\n")
    payload = json.loads(body)
    assert payload["id"] == run_id
    assert payload["status"] == "succeeded"
    assert payload["output"] == {"greeting": "Hello, Sipho!"}
    assert payload["triggerType"] == "user"
    assert [(s["name"], s["status"]) for s in payload["steps"]] == [("Build greeting", "succeeded")]
    assert Run.objects.get(pk=run_id).status == RunStatus.SUCCEEDED


# --- runs ---------------------------------------------------------------------------------------


def test_runs_lists_newest_first_and_filters(org, loop):
    other = LoopFactory(organization=org, slug="invoices")
    ok = RunFactory(loop=loop, status=RunStatus.SUCCEEDED)
    failed = RunFactory(loop=loop, status=RunStatus.FAILED)
    invoice = RunFactory(loop=other, status=RunStatus.WAITING)
    lines = call("runs", "acme").splitlines()
    assert lines[0].split() == ["RUN", "LOOP", "VER", "STATUS", "TRIGGER", "CREATED", "MS"]
    assert [line.split()[0] for line in lines[1:]] == [invoice.pk, failed.pk, ok.pk]
    assert lines[2].split()[1:5] == ["greeting", "1", "failed", "api_token"]

    def ids(*args):
        return [line.split()[0] for line in call("runs", "acme", *args).splitlines()[1:]]

    assert ids("--status", "failed") == [failed.pk]
    assert ids("--status", "failed,waiting") == [invoice.pk, failed.pk]
    assert ids("--loop", "invoices") == [invoice.pk]
    assert ids("--loop", loop.pk, "--limit", "1") == [failed.pk]


def test_runs_says_when_nothing_matches(org, loop, other_org):
    RunFactory(loop=LoopFactory(organization=other_org))
    LoopFactory(organization=org, slug="invoices")
    assert call("runs", "acme") == "No matching runs.\n"
    RunFactory(loop=loop, status=RunStatus.SUCCEEDED)
    assert call("runs", "acme", "--status", "failed") == "No matching runs.\n"
    assert call("runs", "acme", "--loop", "invoices") == "No matching runs.\n"


def test_runs_refuses_a_bad_status_and_limit(org):
    with pytest.raises(CommandError, match="Invalid status: 'done' is not one of"):
        call("runs", "acme", "--status", "done")
    with pytest.raises(CommandError, match="--limit must be at least 1"):
        call("runs", "acme", "--limit", "0")
    with pytest.raises(CommandError, match="No loop 'nope' in organization 'acme'"):
        call("runs", "acme", "--loop", "nope")
    with pytest.raises(CommandError, match="No organization 'nowhere'"):
        call("runs", "nowhere")


# --- --help -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "mentions"),
    [
        ("demo", "--no-serve"),
        ("create_org", "--owner"),
        ("create_token", "--scope"),
        ("deploy", "--note"),
        ("rollback", "version"),
        ("trigger", "--wait"),
        ("runs", "--limit"),
    ],
)
def test_every_command_has_help(command, mentions):
    result = subprocess.run(
        [sys.executable, str(BASE_DIR / "manage.py"), command, "--help"],
        capture_output=True, text=True, cwd=BASE_DIR, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert mentions in result.stdout


# --- `manage.py demo` stops everything it started, however it ends ----------------------------


def _demo(tmp_path, *args) -> subprocess.Popen:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
           "DJANGO_LOG_LEVEL": "WARNING"}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, str(BASE_DIR / "manage.py"), "demo", *args], cwd=BASE_DIR, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def _clusters_on(database: Path) -> list[int]:
    """qcluster processes whose DATABASE_URL is this file."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"qcluster" in cmdline and str(database).encode() in environ:
            found.append(int(proc.name))
    return found


def test_demo_on_a_busy_port_says_so_and_starts_nothing(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        demo = _demo(tmp_path, "--port", str(port))
        output, _ = demo.communicate(timeout=120)
    assert demo.returncode != 0
    assert f"Port {port} on 127.0.0.1 is already in use" in output
    database = tmp_path / "demo.sqlite3"
    if database.exists():  # not even migrated
        with sqlite3.connect(database) as db:
            assert db.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    assert not _clusters_on(tmp_path / "demo.sqlite3")


def test_demo_stopped_by_sigterm_takes_its_worker_cluster_along(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo = _demo(tmp_path, "--port", str(port))
    try:
        seen = []
        for line in demo.stdout:  # until the worker is reported
            seen.append(line)
            if "Worker:" in line:
                break
        assert any("Worker:" in line for line in seen), seen
        # The rest is read as it comes: a full pipe would hold the demo and its cluster still.
        threading.Thread(target=lambda: seen.extend(demo.stdout), daemon=True).start()
        cluster = wait_until(lambda: _clusters_on(tmp_path / "demo.sqlite3"), timeout=60)
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the demo did not stop within 30 s of SIGTERM:\n" + "".join(seen))
        wait_until(lambda: not any(alive(pid) for pid in cluster), timeout=30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)


@pytest.mark.django_db(transaction=True)
def test_bulk_cancels_what_the_filter_matches_through_the_workers(worker, org, loop, other_org):
    waiting = [RunFactory(loop=loop, status="waiting") for _ in range(3)]
    done = RunFactory(loop=loop, status="succeeded")
    theirs = RunFactory(loop=LoopFactory(organization=other_org), status="waiting")
    assert call("bulk", "acme", "cancel", "--status", "waiting", "--dry-run") == (
        "3 runs match; nothing was done (--dry-run).\n"
    )
    assert Run.objects.filter(status="cancelled").count() == 0
    out = call("bulk", "acme", "cancel", "--status", "waiting", "--wait")
    assert out.splitlines()[-1] == "done: 3 done, 0 failed."
    assert {r.status for r in Run.objects.filter(pk__in=[r.pk for r in waiting])} == {"cancelled"}
    assert Run.objects.get(pk=done.pk).status == "succeeded"
    assert Run.objects.get(pk=theirs.pk).status == "waiting"  # another organization's
    entry = AuditEvent.objects.get(action="runs.bulk")
    assert (entry.actor_type, entry.actor_name) == ("system", "manage.py bulk")
    with pytest.raises(CommandError, match="Invalid status"):
        call("bulk", "acme", "cancel", "--status", "sleeping", "--dry-run")
