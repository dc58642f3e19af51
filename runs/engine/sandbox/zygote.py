"""The zygote, inside the sandbox: started once per worker process; makes a sealed process
for each execution.

It is launched with an empty environment and one inherited descriptor, its control socket to
the worker (a SOCK_SEQPACKET unix socket on fd 0). When bubblewrap runs as root it starts as
root in the sandbox's namespaces: it mounts the sandbox's /proc, then gives up root for good
(empty bounding set, the unprivileged uid and gid named on its command line). It imports
everything an execution needs, builds the seccomp programs and installs its own filter, then
serves "exec" requests one at a time.

The zygote holds no organization's code, input or results, ever. Ahead of each execution it
forks a process straight into new user, PID, mount, IPC and UTS namespaces, PID 1 of its own
PID namespace, which maps its ids, seals itself (seal.py) and waits: a spare execution, holding
nothing. An "exec" request carries only limits and, as SCM_RIGHTS, one end of a socket pair the
worker made for that execution alone; the zygote hands both to the spare and closes its copy of
the socket at once, so no other execution can ever reach it. PID 1 applies the limits and only
then reads the program and its input from its own socket. The zygote keeps the wall clock and
reports how the execution ended.
"""

import contextlib
import ctypes
import gc
import importlib
import json
import os
import resource
import select
import signal
import socket
import sys
import time

# This file runs as a script; its siblings are imported as the package `sandbox` (the folder
# above it is bound at /loops in bubblewrap), so that they import each other relatively.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _option(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


if _option("--lib"):
    sys.path.insert(1, _option("--lib"))

from sandbox import policy, protocol, runtime, seal  # noqa: E402

CONTROL_FD = 0
MAX_CONTROL_BYTES = 65536
# PID 1's exit code when it could not seal itself (it says why on its socket first).
EXIT_SEAL_FAILED = 202


def become_unprivileged(uid: int, gid: int) -> None:
    """As root inside bubblewrap's namespaces: mount /proc, then never be root again."""
    with contextlib.suppress(OSError):
        os.makedirs("/proc", exist_ok=True)
    if not os.path.exists("/proc/self"):
        seal._check(seal._mount(b"proc", b"/proc", b"proc", seal.MS_NOSUID | seal.MS_NODEV
                                | seal.MS_NOEXEC), "mounting /proc")  # fmt: skip
    for cap in range(seal.LAST_CAPABILITY + 1):
        seal._prctl(seal.PR_CAPBSET_DROP, cap)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to a non-zero uid: every capability is cleared


BEST_EFFORT = "--best-effort" in sys.argv
# Bubblewrap gave the zygote an empty network namespace of its own; otherwise each execution
# gets one (seal.py).
NETWORK = 0 if "--empty-network" in sys.argv else seal.ISOLATED_NETWORK


def send(control: socket.socket, message: dict) -> None:
    control.send(json.dumps(message, separators=(",", ":")).encode())


def _line(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def _limits(data: bytes) -> dict:
    with contextlib.suppress(ValueError):
        message = json.loads(data)
        if isinstance(message, dict) and isinstance(message.get("limits"), dict):
            return message["limits"]
    return {}


def _allow_fork(limits: dict) -> bool:
    return int(limits.get("max_processes", 1)) > 1


def execution(sock: socket.socket, filters: dict, namespaces: bool, error: str | None) -> int:
    """PID 1 of the execution's namespaces. Seals itself while it waits to be handed an
    execution, then applies that execution's limits, and only then reads its request."""
    sealed = {}
    if error is None:
        try:
            sealed = seal.seal_process(seal.LAST_CAPABILITY, namespaces=namespaces)
        except (seal.SealError, OSError) as exc:
            error = str(exc)
    data, fds, _, _ = socket.recv_fds(sock, MAX_CONTROL_BYTES, 1)
    sock.close()
    if len(fds) != 1:
        return 1
    exec_sock = socket.socket(fileno=fds[0])
    limits = _limits(data)
    if error is None:
        try:
            sealed.update(seal.seal_limits(limits, filters.get(_allow_fork(limits))))
        except (seal.SealError, OSError) as exc:
            error = str(exc)
    if error is not None:
        with contextlib.suppress(OSError):
            exec_sock.sendall(_line({"op": protocol.SEAL_FAILED, "message": error}))
        return EXIT_SEAL_FAILED
    rfile = exec_sock.makefile("rb")
    wfile = exec_sock.makefile("wb")
    channel = runtime.Channel(rfile, wfile)
    line = rfile.readline()
    if not line:
        return 3
    request = json.loads(line)
    # Told with the execution's first message (its buffer is flushed then): one wake-up of the
    # worker fewer per execution. What was applied is only recorded (ExitInfo.sealed).
    wfile.write(_line({"op": protocol.SEALED, **sealed, "uid": os.getuid(), "pid": os.getpid()}))
    runtime.execute_request(request, channel)
    wfile.flush()
    return 0


class Spare:
    """An execution made ahead of time: PID 1 of its own namespaces, sealed and waiting. It
    holds nothing of any organization until the zygote hands it one execution's socket."""

    def __init__(self, control: socket.socket, filters: dict):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        uid, gid = os.getuid(), os.getgid()
        namespaces, error = True, None
        try:
            self.pid = seal.fork_into_namespaces(NETWORK)
        except OSError as exc:
            namespaces = False  # without bubblewrap and user namespaces: the other layers only
            error = None if BEST_EFFORT else f"namespaces: {exc}"
            self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                control.close()
                self.sock.close()
                if namespaces:
                    try:
                        seal.map_own_ids(uid, gid)
                    except OSError as exc:
                        error = f"namespaces: {exc}"
                code = execution(theirs, filters, namespaces, error)
            finally:
                os._exit(code)
        theirs.close()

    def hand(self, order: bytes, exec_fd: int) -> bool:
        try:
            socket.send_fds(self.sock, [order], [exec_fd])
        except OSError:
            return False
        return True

    def discard(self) -> None:
        self.sock.close()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def report(status: int, usage, ended: str | None) -> dict:
    """How PID 1 ended. `ended` is why the zygote killed it ("timed_out", "killed"), if it did."""
    code = os.waitstatus_to_exitcode(status)
    message = {
        "op": protocol.EXIT,
        "code": code,
        "signal": None,
        "timed_out": ended == "timed_out",
        "killed": ended == "killed",
        "seal_failed": code == EXIT_SEAL_FAILED,
        "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
        "max_rss_kb": usage.ru_maxrss,
    }
    if ended is None and os.WIFSIGNALED(status):
        message["signal"] = os.WTERMSIG(status)
    return message


def watch(control: socket.socket, spare: Spare, limits: dict) -> None:
    """Watch the execution `spare` was handed until it ends, then report how. Killing PID 1
    ends everything of the execution (pid_namespaces(7))."""
    pidfd = os.pidfd_open(spare.pid)
    deadline = time.monotonic() + float(limits.get("wall_seconds", 60))
    ended = None
    try:
        while True:
            timeout = None if ended else max(deadline - time.monotonic(), 0)
            ready, _, _ = select.select([pidfd, control], [], [], timeout)
            if pidfd in ready:
                break
            if not ready:
                ended = "timed_out"
                os.kill(spare.pid, signal.SIGKILL)
                continue
            data = control.recv(MAX_CONTROL_BYTES)
            if not data:
                os.kill(spare.pid, signal.SIGKILL)  # the worker went away
                os._exit(0)
            with contextlib.suppress(ValueError):
                if json.loads(data).get("op") == protocol.KILL and ended is None:
                    ended = "killed"
                    os.kill(spare.pid, signal.SIGKILL)
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(spare.pid, 0)
    spare.sock.close()
    send(control, report(status, usage, ended))


# CPython 3.12 and 3.13 (with the GIL) treat an object whose reference count has all of its low
# 32 bits set as immortal (PEP 683): counting references to it writes nothing.
IMMORTAL_REFCOUNT = 0xFFFFFFFF
IMMORTAL_HEAP = (
    sys.version_info[:2] in {(3, 12), (3, 13)} and getattr(sys, "_is_gil_enabled", lambda: True)()
)


def freeze_heap() -> None:
    """Make what the zygote holds read-only to every process forked from it, before the first.

    After a fork, the first write to a page the two processes share copies it (a page fault
    each, 3-5 us on these virtual machines), and CPython writes to every object it touches: its
    reference count, and its garbage collector's links when a collection visits it. Objects
    made immortal (PEP 683's use case: pre-fork servers) and moved to the collector's permanent
    generation (gc.freeze) are only read, by the zygote and by every execution alike: ~100
    fewer copied pages on each side of each fork (bench/README.md). They are never freed, which
    is what the zygote wants of them anyway. malloc_trim returns what imports freed."""
    gc.collect()
    if IMMORTAL_HEAP:
        objects = gc.get_objects()
        seen = {id(o) for o in objects}
        for container in list(objects):
            for referent in gc.get_referents(container):
                if id(referent) not in seen:  # strings, numbers, bytes: not tracked themselves
                    seen.add(id(referent))
                    objects.append(referent)
        for obj in objects:
            refcount = ctypes.c_ssize_t.from_address(id(obj))
            if refcount.value < IMMORTAL_REFCOUNT:
                refcount.value = IMMORTAL_REFCOUNT
        del objects, seen
    gc.freeze()
    with contextlib.suppress(AttributeError, OSError):
        ctypes.CDLL(None).malloc_trim(0)


def main() -> None:
    control = socket.socket(fileno=os.dup(CONTROL_FD))
    # Until it is ready, what goes wrong goes to stderr (the worker reads it if the zygote
    # does not start); from then on, nothing an execution prints reaches the worker.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Everything an execution imports is imported here, once, while the interpreter's files
    # are still readable (without bubblewrap they may not be to the sandbox user) and so that
    # no execution pays for it. None of it holds any organization's data. Not `logging`: a
    # loop's is the runtime's own, and the real one imports threading, whose after-fork
    # handler would cost every execution ~100 page faults.
    for name in (*(policy.ALLOWED_MODULES - {"logging"}), "ctypes", "socket"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    filters, zygote_filter, seccomp_state = {}, None, "off"
    if "--seccomp" in sys.argv:
        try:
            filters = {flag: seal.build_execution_filter(allow_fork=flag) for flag in (False, True)}
            zygote_filter = seal.build_zygote_filter()
            seccomp_state = "on"
        except (ImportError, OSError, RuntimeError) as exc:
            seccomp_state, filters = f"unavailable: {exc}", {}
    uid, gid = _option("--uid"), _option("--gid")
    if os.getuid() == 0 and uid is not None:
        become_unprivileged(int(uid), int(gid or uid))
    if _option("--die-with"):
        # Without bubblewrap: die with the worker's thread that started the zygote. Set once its
        # ids are final (a change of ids clears it); its parent may have died already.
        seal.die_with_parent()
        if os.getppid() != int(_option("--die-with")):
            os._exit(1)
    if zygote_filter is not None:
        seal.load_filter(zygote_filter)
    os.dup2(devnull, 2)
    os.close(devnull)
    send(control, {"op": protocol.READY, "seccomp": seccomp_state, "uid": os.getuid(),
                   "pid": os.getpid()})  # fmt: skip
    freeze_heap()
    spare = Spare(control, filters)
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_CONTROL_BYTES, 1)
        except OSError:
            return
        if not data:
            return
        limits = _limits(data)
        if len(fds) != 1 or not limits:
            for fd in fds:
                os.close(fd)
            continue
        if not spare.hand(data, fds[0]):  # it died waiting: make another
            spare.discard()
            spare = Spare(control, filters)
            spare.hand(data, fds[0])
        os.close(fds[0])
        watch(control, spare, limits)
        # The next execution is made now, while the worker records this one.
        spare = Spare(control, filters)


if __name__ == "__main__":
    main()
