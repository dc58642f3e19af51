"""The zygote: started once per worker process inside the sandbox; forks a sealed process per
execution.

It is launched with an empty environment and one inherited descriptor, its control socket to
the worker (a SOCK_SEQPACKET unix socket on fd 0). When bubblewrap runs as root it starts as
root in the sandbox's namespaces: it mounts the sandbox's /proc, then gives up root for good
(empty bounding set, the unprivileged uid and gid named on its command line). It imports
everything an execution needs, builds the seccomp programs and installs its own filter, then
serves "exec" requests one at a time.

The zygote holds no organization's code, input or results, ever. An "exec" request carries
only limits and, as SCM_RIGHTS, one end of a socket pair the worker made for that execution
alone. The zygote forks; the child enters new user, PID, mount, IPC, network and UTS
namespaces and forks the execution as PID 1 there; PID 1 seals itself (seal.py) and only then
reads the program and its input from its own socket. The zygote closes its copy of that socket
at once, so no other execution can ever reach it.
"""

import contextlib
import json
import os
import resource
import select
import signal
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _option(name: str) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


if _option("--lib"):
    sys.path.insert(1, _option("--lib"))

import runtime  # noqa: E402
import seal  # noqa: E402

CONTROL_FD = 0
MAX_CONTROL_BYTES = 65536
# How the middle process reports the way the execution ended (its own exit code).
EXIT_TIMED_OUT = 200
EXIT_KILLED = 201
EXIT_SEAL_FAILED = 202
EXIT_SIGNAL_BASE = 100


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


def send(control: socket.socket, message: dict) -> None:
    control.send(json.dumps(message, separators=(",", ":")).encode())


def run_execution(
    exec_sock: socket.socket, limits: dict, program: bytes | None, namespaces: bool
) -> None:
    """PID 1 of the execution's namespaces: seal, then read the request and run it."""
    try:
        sealed = seal.seal(limits, program, seal.LAST_CAPABILITY, namespaces=namespaces)
    except (seal.SealError, OSError) as exc:
        with contextlib.suppress(OSError):
            exec_sock.sendall(
                json.dumps({"op": "sealfailed", "message": str(exc)}).encode() + b"\n"
            )
        os._exit(EXIT_SEAL_FAILED)
    rfile = exec_sock.makefile("rb")
    wfile = exec_sock.makefile("wb")
    channel = runtime.Channel(rfile, wfile)
    line = rfile.readline()
    if not line:
        os._exit(3)
    request = json.loads(line)
    channel.send({"op": "sealed", **sealed, "uid": os.getuid(), "pid": os.getpid()})
    runtime.execute_request(request, channel)
    wfile.flush()


def middle(exec_sock: socket.socket, limits: dict, program: bytes | None) -> int:
    """The process between the zygote and PID 1: enters the namespaces, forks PID 1, enforces
    the wall clock, and reports how PID 1 ended as its own exit code."""
    seal.die_with_parent()
    namespaces = True
    try:
        seal.enter_namespaces()
    except OSError as exc:
        if "--best-effort" not in sys.argv:
            with contextlib.suppress(OSError):
                message = {"op": "sealfailed", "message": f"namespaces: {exc}"}
                exec_sock.sendall(json.dumps(message).encode() + b"\n")
            return EXIT_SEAL_FAILED
        namespaces = False  # no bubblewrap and no user namespaces: the other layers only
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run_execution(exec_sock, limits, program, namespaces)
        except BaseException:
            code = 1
        os._exit(code)
    exec_sock.close()
    ended = {"why": None}

    def stop(why: str):
        def handler(signum, frame):
            ended["why"] = ended["why"] or why
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        return handler

    signal.signal(signal.SIGALRM, stop("timed_out"))
    signal.signal(signal.SIGTERM, stop("killed"))
    signal.setitimer(signal.ITIMER_REAL, float(limits.get("wall_seconds", 60)))
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            return 1
        except InterruptedError:
            continue
    signal.setitimer(signal.ITIMER_REAL, 0)
    if ended["why"] == "timed_out":
        return EXIT_TIMED_OUT
    if ended["why"] == "killed":
        return EXIT_KILLED
    if os.WIFSIGNALED(status):
        return EXIT_SIGNAL_BASE + os.WTERMSIG(status)
    return min(os.waitstatus_to_exitcode(status), 99)


def report(middle_status: int, usage) -> dict:
    code = os.waitstatus_to_exitcode(middle_status)
    message = {
        "op": "exit",
        "code": code,
        "signal": None,
        "timed_out": code == EXIT_TIMED_OUT,
        "killed": code == EXIT_KILLED,
        "seal_failed": code == EXIT_SEAL_FAILED,
        "cpu_ms": int((usage.ru_utime + usage.ru_stime) * 1000),
        "max_rss_kb": usage.ru_maxrss,
    }
    if os.WIFSIGNALED(middle_status):
        message["signal"] = os.WTERMSIG(middle_status)
    elif EXIT_SIGNAL_BASE < code < EXIT_TIMED_OUT:
        message["signal"] = code - EXIT_SIGNAL_BASE
    return message


def serve_one(control: socket.socket, request: dict, exec_fd: int, filters: dict) -> None:
    limits = request.get("limits") if isinstance(request.get("limits"), dict) else {}
    allow_fork = int(limits.get("max_processes", 1)) > 1
    program = filters.get(allow_fork) if filters else None
    exec_sock = socket.socket(fileno=exec_fd)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            control.close()
            code = middle(exec_sock, limits, program)
        finally:
            os._exit(code)
    exec_sock.close()
    pidfd = os.pidfd_open(pid)
    # Backstop: the middle process enforces the wall clock; if it cannot, the zygote does.
    backstop = float(limits.get("wall_seconds", 60)) + 5
    try:
        while True:
            ready, _, _ = select.select([pidfd, control], [], [], backstop)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                continue
            if control in ready:
                data = control.recv(MAX_CONTROL_BYTES)
                if not data:
                    os.kill(pid, signal.SIGKILL)  # the worker went away
                    os._exit(0)
                with contextlib.suppress(ValueError):
                    if json.loads(data).get("op") == "kill":
                        os.kill(pid, signal.SIGTERM)
            if pidfd in ready:
                break
    finally:
        os.close(pidfd)
    _, status, usage = os.wait4(pid, 0)
    send(control, report(status, usage))


def main() -> None:
    control = socket.socket(fileno=os.dup(CONTROL_FD))
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    uid, gid = _option("--uid"), _option("--gid")
    if os.getuid() == 0 and uid is not None:
        become_unprivileged(int(uid), int(gid or uid))
    filters = {}
    seccomp_state = "off"
    if "--seccomp" in sys.argv:
        try:
            filters = {flag: seal.build_execution_filter(allow_fork=flag) for flag in (False, True)}
            seal.load_filter(seal.build_zygote_filter())
            seccomp_state = "on"
        except (ImportError, OSError, RuntimeError) as exc:
            seccomp_state = f"unavailable: {exc}"
            filters = {}
    send(control, {"op": "ready", "seccomp": seccomp_state, "uid": os.getuid(),
                   "pid": os.getpid()})  # fmt: skip
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(control, MAX_CONTROL_BYTES, 1)
        except OSError:
            return
        if not data:
            return
        try:
            request = json.loads(data)
        except ValueError:
            request = {}
        if request.get("op") != "exec" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        serve_one(control, request, fds[0], filters)


if __name__ == "__main__":
    main()
