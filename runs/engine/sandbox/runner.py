"""The zygote: started once per worker process inside the sandbox, forks a child per execution.

It is launched with an empty environment and no inherited descriptors other than its
pipes, imports everything an execution needs, locks itself down (seccomp, rlimits) and then
serves "exec" requests, one at a time, over stdin/stdout as JSON lines. Each execution runs
in a fresh forked child that is never reused; the child speaks the step protocol on the same
pipes while the zygote waits for it, then the zygote reports how it ended and its CPU time.
"""

import contextlib
import json
import os
import resource
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
if "--lib" in sys.argv:
    sys.path.insert(1, sys.argv[sys.argv.index("--lib") + 1])

import runtime


class Channel:
    def __init__(self, rfile, wfile):
        self.rfile = rfile
        self.wfile = wfile

    def send(self, message):
        self.wfile.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.wfile.flush()

    def request(self, message):
        self.send(message)
        line = self.rfile.readline()
        if not line:
            os._exit(3)  # the worker went away
        return json.loads(line)


def apply_seccomp():
    """Deny network sockets, process tracing, mounts and new programs for good."""
    import ctypes.util

    # find_library would run ldconfig; the names are fixed on the systems we support.
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    original, ctypes.util.find_library = ctypes.util.find_library, known.get
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError):
        return "unavailable"
    finally:
        ctypes.util.find_library = original
    import errno

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for family in (2, 10, 16, 17):  # AF_INET, AF_INET6, AF_NETLINK, AF_PACKET
        f.add_rule(eperm, "socket", seccomp.Arg(0, seccomp.EQ, family))
    for name in (
        "ptrace", "mount", "umount2", "unshare", "setns", "bpf", "keyctl", "add_key",
        "request_key", "kexec_load", "init_module", "finit_module", "delete_module", "reboot",
        "swapon", "swapoff", "pivot_root", "chroot", "perf_event_open", "process_vm_readv",
        "process_vm_writev", "userfaultfd", "execve", "execveat", "personality",
    ):  # fmt: skip
        try:
            f.add_rule(eperm, name)
        except Exception:  # noqa: S112 - a syscall this kernel lacks
            continue
    f.load()
    return "on"


def limit(kind, value):
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


def run_child(code_obj, request, channel):
    limits = request.get("limits", {})
    cpu = int(limits.get("cpu_seconds", 10))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    memory = int(limits.get("memory_mb", 512)) * 1024 * 1024
    limit(resource.RLIMIT_AS, memory)
    limit(resource.RLIMIT_NOFILE, 32)
    limit(resource.RLIMIT_FSIZE, 1024 * 1024)
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NPROC, 32)
    runtime.execute(code_obj, request, channel)
    channel.wfile.flush()


def main():
    # Keep the protocol on private descriptors; anything printed by accident goes nowhere.
    rfile = os.fdopen(os.dup(0), "rb")
    wfile = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    channel = Channel(rfile, wfile)
    limit(resource.RLIMIT_CORE, 0)
    seccomp_state = apply_seccomp() if "--seccomp" in sys.argv else "off"
    channel.send({"op": "ready", "seccomp": seccomp_state, "uid": os.getuid(), "pid": os.getpid()})

    compiled = {}
    while True:
        line = rfile.readline()
        if not line:
            return
        request = json.loads(line)
        if request.get("op") != "exec":
            continue
        code = request["code"]
        code_obj = compiled.get(code)
        if code_obj is None:
            try:
                code_obj = runtime.compile_loop(code)
            except runtime.CodeError as exc:
                channel.send({"op": "failed", "error": {"message": str(exc), "type": "CodeError"}})
                channel.send({"op": "exit", "code": 0, "signal": None, "cpu_ms": 0})
                continue
            if len(compiled) > 64:
                compiled.clear()
            compiled[code] = code_obj
        wall = float(request.get("limits", {}).get("wall_seconds", 60))
        pid = os.fork()
        if pid == 0:
            code_status = 0
            try:
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                run_child(code_obj, request, channel)
            except BaseException:
                code_status = 1
            os._exit(code_status)
        timed_out = []

        def on_alarm(signum, frame, pid=pid, timed_out=timed_out):
            timed_out.append(True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, wall)
        _, status, usage = os.wait4(pid, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
        channel.send(
            {
                "op": "exit",
                "code": os.waitstatus_to_exitcode(status),
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "timed_out": bool(timed_out),
                "cpu_ms": cpu_ms,
                "max_rss_kb": usage.ru_maxrss,
            }
        )


if __name__ == "__main__":
    main()
