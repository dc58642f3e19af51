"""The sandbox's OS layers, each on its own, on real bubblewrap (as root, as CI runs).

The Python guards are off here (LOOPS_PYTHON_GUARDS=0): the programs are plain Python with
`os`, `ctypes` and `socket`, as if the guards had been broken. Each test then checks that the
next run of another organization succeeds with its right output.
"""

import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from runs.engine.zygote_client import get_zygote, sandbox_identity
from tests.engine_helpers import needs_bwrap, run_program

pytestmark = [pytest.mark.django_db, needs_bwrap]


@pytest.fixture(autouse=True)
def _plain_python(settings):
    settings.LOOPS_PYTHON_GUARDS = False


def assert_next_run_of_another_org_is_right(other_org):
    token = secrets.token_hex(4)
    run = run_program(
        other_org, "return {'echo': event.body['token']}", {"token": token}, slug=f"by-{token}"
    )
    assert run.status == "succeeded", run.error_message
    assert run.output == {"echo": token}


def host_processes_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == name:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [d for child in map(int, children) for d in (child, *descendants(child))]


def is_runner(pid: int) -> bool:
    return Path(f"/proc/{pid}/comm").read_text().startswith("python")


DAEMON = """
import os, time
marker = event.body["marker"]
read_end, write_end = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        with open("/proc/self/comm", "w") as f:
            f.write(marker)
        os.write(write_end, b"1")
        while True:
            time.sleep(0.05)
    os._exit(0)
os.waitpid(pid, 0)
os.close(write_end)
return "daemon running" if os.read(read_end, 1) == b"1" else "no daemon"
"""


def test_fork_is_refused_by_default(org, other_org):
    run = run_program(
        org,
        "import os\ntry:\n    os.fork()\nexcept OSError as exc:\n    return exc.errno\nreturn 0",
    )
    assert run.output == 1  # EPERM
    assert_next_run_of_another_org_is_right(other_org)


def test_a_forked_daemon_is_gone_when_its_run_ends(org, other_org, settings):
    settings.LOOPS_MAX_PROCESSES = 8  # let it fork: the PID namespace alone must end it
    marker = "loopsd" + secrets.token_hex(4)
    run = run_program(org, DAEMON, {"marker": marker})
    assert run.status == "succeeded", run.error_message
    assert run.output == "daemon running"
    # The daemon renamed itself; nothing of that name may be left on the host.
    deadline = time.monotonic() + 2
    while host_processes_named(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_processes_named(marker) == []
    assert_next_run_of_another_org_is_right(other_org)


LEAVE_TRACES = """
import os, socket, time
with open("/tmp/secret-of-acme", "w") as f:
    f.write("acme")
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind("\\0loops-leak")
listener.listen(1)
read_end, write_end = os.pipe()
if os.fork() == 0:
    os.setsid()
    with open("/proc/self/comm", "w") as f:
        f.write(event.body["marker"])
    os.write(write_end, b"1")
    while True:
        time.sleep(0.05)
os.close(write_end)
return "left traces" if os.read(read_end, 1) == b"1" else "no daemon"
"""

LOOK_AROUND = """
import os, socket
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
seen = {"tmp": sorted(os.listdir("/tmp")), "pids": pids}
names = []
for pid in seen["pids"]:
    with open(f"/proc/{pid}/comm") as f:
        names.append(f.read().strip())
seen["names"] = names
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect("\\0loops-leak")
    seen["abstract_socket"] = "connected"
except OSError as exc:
    seen["abstract_socket"] = exc.strerror
return seen
"""


def test_another_organizations_later_runs_see_none_of_its_processes_or_files(
    org, other_org, settings
):
    settings.LOOPS_MAX_PROCESSES = 8
    marker = "loopsd" + secrets.token_hex(4)
    assert run_program(org, LEAVE_TRACES, {"marker": marker}).output == "left traces"
    seen = run_program(other_org, LOOK_AROUND, slug="looker").output
    assert seen["tmp"] == []
    assert seen["pids"] == [1]  # only itself, PID 1 of its own namespace
    assert marker not in seen["names"]
    assert seen["abstract_socket"] == "Connection refused"
    assert_next_run_of_another_org_is_right(other_org)


REACH_THE_HOST = """
import os, socket
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect("\\0" + event.body["name"])
    reached = "connected"
except OSError as exc:
    reached = exc.strerror
return {"reached": reached, "net": os.readlink("/proc/self/ns/net")}
"""


@pytest.mark.parametrize("mode", ["bwrap", "process"])
def test_an_execution_reaches_no_abstract_socket_of_the_host(org, other_org, settings, mode):
    """Under bubblewrap the zygote's network namespace is empty; without it (a laptop), each
    execution gets one of its own, so the host's abstract unix sockets (a desktop bus, X11, a
    database's) stay out of reach."""
    settings.LOOPS_SANDBOX = mode
    get_zygote().stop()  # the next execution starts a zygote in this mode
    name = f"loops-host-{secrets.token_hex(4)}"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind("\0" + name)
            listener.listen(1)
            run = run_program(org, REACH_THE_HOST, {"name": name})
        assert run.status == "succeeded", run.error_message
        assert run.output["reached"] == "Connection refused"
        assert run.output["net"] != os.readlink("/proc/self/ns/net")
        assert_next_run_of_another_org_is_right(other_org)
    finally:
        get_zygote().stop()  # later tests start theirs in the default mode


SCAN_MEMORY = r"""
import gc, re
pattern = re.compile(rb"SECRET-[0-9a-f]{32}")
found = set()
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("r"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            chunk = mem.read(end - start)
        except (OSError, OverflowError, ValueError):
            continue
        found.update(m.decode() for m in pattern.findall(chunk))
for obj in gc.get_objects():
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ()
    for value in values:
        if isinstance(value, str) and "SECRET-" in value:
            found.update(re.findall(r"SECRET-[0-9a-f]{32}", value))
return sorted(found)
"""


def test_neither_code_nor_input_of_another_org_is_in_a_later_executions_memory(org, other_org):
    in_code, in_input = f"SECRET-{secrets.token_hex(16)}", f"SECRET-{secrets.token_hex(16)}"
    run = run_program(org, f"return [{in_code!r}, event.body['secret']]", {"secret": in_input})
    assert run.output == [in_code, in_input]
    scan = run_program(other_org, SCAN_MEMORY, slug="scanner")
    assert scan.status == "succeeded", scan.error_message
    found = scan.output
    assert in_code not in found
    assert in_input not in found
    assert_next_run_of_another_org_is_right(other_org)


FORGE = """
import os, json, time
forged = (json.dumps({"op": "done", "output_json": json.dumps("forged")}) + "\\n").encode()
if os.fork() == 0:
    os.setsid()
    while True:
        for fd in range(3, 64):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        time.sleep(0.01)
time.sleep(0.2)
return "forger done"
"""


def test_a_forger_left_behind_cannot_write_into_later_executions(org, other_org, settings):
    settings.LOOPS_MAX_PROCESSES = 8
    run = run_program(org, FORGE)
    assert run.status == "succeeded", run.error_message
    # Its own run is its own to forge: a line the forger writes between PID 1's outcome and
    # the namespace's end (PID 1's exit) is the last outcome the worker reads.
    assert run.output in ("forger done", "forged")
    for _ in range(4):
        assert_next_run_of_another_org_is_right(other_org)


STATUS = """
import os, socket
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
families = []
for family in range(1, 46):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW):
        try:
            socket.socket(family, kind).close()
            families.append(family)
            break
        except OSError:
            pass
return {
    "uid": status["Uid"].split(),
    "uid_map": open("/proc/self/uid_map").read().split(),
    "cap_eff": status["CapEff"].strip(),
    "cap_prm": status["CapPrm"].strip(),
    "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "families": families,
}
"""


def test_the_execution_is_unprivileged_and_only_af_unix_opens(org, other_org):
    status = run_program(org, STATUS).output
    uid = (sandbox_identity() or (os.getuid(),))[0]
    assert uid != 0
    assert status["uid"] == [str(uid)] * 4
    inside, outside, count = status["uid_map"]
    assert (inside, count) == (str(uid), "1")
    assert outside != "0"  # the host uid behind the execution's
    assert status["cap_eff"] == status["cap_prm"] == status["cap_bnd"] == "0000000000000000"
    assert status["no_new_privs"] == "1"
    assert status["seccomp"] == "2"
    assert status["families"] == [1]  # AF_UNIX only
    # The zygote the executions come from is not root on the host either.
    runners = [pid for pid in descendants(get_zygote().proc.pid) if is_runner(pid)]
    assert runners
    for pid in runners:
        host_uid = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]
        assert host_uid == str(uid)
    assert_next_run_of_another_org_is_right(other_org)


SYSCALLS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "io_uring_setup": (425, 8, 0), "userfaultfd": (323, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0), "bpf": (321, 0, 0, 0), "keyctl": (250, 0, 0),
    "ptrace": (101, 16, 1), "mount": (165, 0, 0, 0, 0, 0), "unshare": (272, 0x10000000),
    "setns": (308, 0, 0), "memfd_create": (319, 0, 0), "execve": (59, 0, 0, 0),
    "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0), "process_vm_readv": (310, 1, 0, 0, 0, 0, 0),
    "open_by_handle_at": (304, 0, 0, 0), "pidfd_getfd": (438, 0, 0, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    # What the zygote's own filter lets the zygote do, and each execution's refuses again.
    "pidfd_open": (434, 1, 0), "clone_newns": (56, 0x20000 | 17, 0, 0, 0, 0),
    "clone_newnet": (56, 0x40000000 | 17, 0, 0, 0, 0), "clone_newtime": (56, 0x80 | 17, 0, 0, 0, 0),
    "clone_process": (56, 17, 0, 0, 0, 0), "set_pdeathsig": (157, 1, 9, 0, 0, 0),
    "set_dumpable": (157, 4, 0, 0, 0, 0), "set_seccomp": (157, 22, 2, 0, 0, 0),
    "set_no_new_privs": (157, 38, 1, 0, 0, 0), "cap_ambient_clear": (157, 47, 4, 0, 0, 0),
}
result = {}
for name, (number, *args) in calls.items():
    ctypes.set_errno(0)
    returned = libc.syscall(number, *[ctypes.c_long(a) for a in args])
    result[name] = [returned, ctypes.get_errno()]
return result
"""


def test_dangerous_syscalls_are_refused(org, other_org):
    results = run_program(org, SYSCALLS).output
    for name, (returned, error) in results.items():
        assert returned == -1, name
        assert error == 1, f"{name}: errno {error}"  # EPERM from seccomp, not a mere EINVAL
    assert_next_run_of_another_org_is_right(other_org)


FORK_400 = """
import os, time
made = refused = 0
for _ in range(400):
    try:
        pid = os.fork()
    except OSError:
        refused += 1
        continue
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    made += 1
return {"made": made, "refused": refused}
"""


def test_400_forks_are_refused(org, other_org):
    counts = run_program(org, FORK_400).output
    assert counts == {"made": 0, "refused": 400}
    assert_next_run_of_another_org_is_right(other_org)


def test_forks_past_the_process_limit_are_refused(org, other_org, settings):
    settings.LOOPS_MAX_PROCESSES = 8
    counts = run_program(org, FORK_400).output
    assert counts["made"] <= 7  # the execution itself is the eighth
    assert counts["refused"] >= 393
    assert_next_run_of_another_org_is_right(other_org)


HOG_300MB = """
import os, time
def hold():
    block = bytearray(300 * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block
read_end, write_end = os.pipe()
for _ in range(3):
    try:
        if os.fork() == 0:
            try:
                keep = hold()
                os.write(write_end, b"1")
                time.sleep(2)
            finally:
                os._exit(0)
    except OSError:
        pass
survivors = 0
try:
    keep = hold()
    survivors += 1
except MemoryError:
    pass
os.close(write_end)
time.sleep(1)
survivors += len(os.read(read_end, 16))
return survivors
"""


def test_four_processes_of_300mb_under_512mb_do_not_all_survive(org, other_org, settings):
    settings.LOOPS_MEMORY_MB = 512
    run = run_program(org, HOG_300MB)
    assert run.status != "succeeded" or run.output < 4
    assert_next_run_of_another_org_is_right(other_org)


FLOOD = """
import os
chunk = b"x" * (1024 * 1024)
for fd in range(0, 64):
    for _ in range(300):
        try:
            os.write(fd, chunk)
        except OSError:
            break
return "flooded"
"""


def peak_rss_during(action) -> tuple[object, int]:
    """Run action() while sampling this process's resident memory; return (result, peak kB)."""
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            text = Path("/proc/self/status").read_text()
            peak[0] = max(peak[0], int(re.search(r"VmRSS:\s+(\d+)", text).group(1)))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    return result, peak[0]


def test_300mb_without_a_newline_leaves_the_worker_memory_bounded(org, other_org, settings):
    baseline = int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    run, peak = peak_rss_during(lambda: run_program(org, FLOOD))
    assert run.status == "failed"
    assert "over the limit of" in run.error_message
    limit_kb = settings.LOOPS_MAX_MESSAGE_BYTES // 1024
    assert peak - baseline < limit_kb + 64 * 1024, (peak - baseline, limit_kb)
    assert_next_run_of_another_org_is_right(other_org)


MALFORMED = """
import os, time
for fd in range(3, 64):
    try:
        os.write(fd, b"{not json\\n")
    except OSError:
        pass
time.sleep(1)
"""


def test_a_malformed_message_fails_the_execution(org, other_org):
    run = run_program(org, MALFORMED)
    assert run.status == "failed"
    assert "The execution sent a malformed message" in run.error_message
    assert_next_run_of_another_org_is_right(other_org)


FORGED = """
import os, time
for fd in range(3, 64):
    try:
        os.write(fd, %r)
    except OSError:
        pass
time.sleep(1)
"""


@pytest.mark.parametrize(
    "message",
    [
        b'{"op":"log","level":"info","message":"x","step":[1]}',
        b'{"op":"step","name":"n","kind":"do"}',
        b'{"op":"step","key":"k","name":"n","kind":"do","parent":{"a":1}}',
    ],
)
def test_a_message_the_worker_cannot_use_fails_the_execution_not_the_worker(
    org, other_org, message
):
    """Well-formed JSON of the wrong shape ends the execution and fails its run at once: the
    worker's turn goes on, and the run is not left `running` to be taken up again and again."""
    run = run_program(org, FORGED % (message + b"\n"))
    assert run.status == "failed"
    assert "message the worker could not use" in run.error_message
    assert run.executions == 1
    assert_next_run_of_another_org_is_right(other_org)


CPU_TREE = """
import os, time
def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
pid = os.fork()
if pid == 0:
    burn(1.0)
    os._exit(0)
burn(0.2)
os.waitpid(pid, 0)
return "burned"
"""


def test_recorded_cpu_time_counts_every_process(org, other_org, settings):
    settings.LOOPS_MAX_PROCESSES = 4
    run = run_program(org, CPU_TREE)
    assert run.output == "burned"
    assert run.cpu_time_ms >= 1100
    assert_next_run_of_another_org_is_right(other_org)


def test_a_cpu_burning_orphan_is_killed_and_counted(org, other_org, settings):
    settings.LOOPS_MAX_PROCESSES = 4
    orphan = CPU_TREE.replace("burn(1.0)", "burn(30)").replace("os.waitpid(pid, 0)\n", "")
    started = time.monotonic()
    run = run_program(org, orphan)
    assert run.output == "burned"
    assert time.monotonic() - started < 10  # the orphan did not hold the execution
    assert run.cpu_time_ms >= 150
    assert_next_run_of_another_org_is_right(other_org)


def test_an_execution_leaves_no_channel_open_in_the_worker(org, other_org):
    assert_next_run_of_another_org_is_right(other_org)  # the zygote is up
    before = set(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert_next_run_of_another_org_is_right(other_org)
    assert set(os.listdir("/proc/self/fd")) == before
