"""The worker's side of the sandbox: starts the zygote and speaks to each execution.

The runner is a separate program started with an empty environment and no inherited
descriptors but its control socket (never a fork of this DB-connected worker), inside
bubblewrap where available. Each lane of a worker process (runs.engine.turns) owns one zygote
and runs one execution at a time through it. Every execution gets a socket pair made for it
alone: one end travels to the zygote as SCM_RIGHTS and on to the sealed execution; the program
and its input are written into the other end only after the execution has sealed itself
(sandbox/zygote.py). Every message read from an execution is bounded by
LOOPS_MAX_MESSAGE_BYTES.
"""

import contextlib
import json
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import RestrictedPython
from django.conf import settings

from loops_project import strict_json
from runs.engine.sandbox import protocol

try:
    import pyseccomp
except (ImportError, OSError):  # libseccomp missing: the runner reports seccomp unavailable
    pyseccomp = None

logger = logging.getLogger(__name__)

SANDBOX_DIR = Path(__file__).resolve().parent / "sandbox"
NOBODY = 65534
START_TIMEOUT = 15.0
# After a sandbox failed to start, how long its lane takes no runs before it tries again.
RETRY_SECONDS = 5.0
EXIT_GRACE = 5.0
CONTROL_BYTES = 65536


class SandboxError(RuntimeError):
    pass


class MessageTooLarge(Exception):
    pass


class MessageRejected(Exception):
    """The worker could not act on a message of the execution (a value of the wrong shape,
    which only a program past the guards sends): the execution is ended, and its run fails
    with this reason."""


@dataclass
class ExitInfo:
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cpu_ms: int = 0
    crashed: bool = False
    killed: bool = False
    seal_error: str | None = None
    protocol_error: str | None = None
    sealed: dict = field(default_factory=dict)


def _interpreter() -> str:
    # By its real path: a shim on PATH costs ~100 ms per start.
    return os.path.realpath(sys.executable)


@cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@cache
def bwrap_works() -> bool:
    path = bwrap_path()
    if not path:
        return False
    probe = subprocess.run(
        [path, "--unshare-all", "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--",
         "/usr/bin/true"],
        env={}, capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    return probe.returncode == 0


def sandbox_mode() -> str:
    """ "bwrap" (every layer) or "process" (no bubblewrap: a plain process with the others)."""
    wanted = settings.LOOPS_SANDBOX
    if wanted == "process":
        return "process"
    if bwrap_works():
        return "bwrap"
    if wanted == "bwrap":
        raise SandboxError("LOOPS_SANDBOX=bwrap but bubblewrap (bwrap) is missing or not working")
    return "process"


def sandbox_identity() -> tuple[int, int] | None:
    """The host uid and gid loop code runs as when the worker is root (LOOPS_SANDBOX_USER, a
    name or a number); None when the worker is not root and executions keep its uid."""
    if os.getuid() != 0:
        return None
    wanted = str(settings.LOOPS_SANDBOX_USER)
    if wanted.isdigit():
        return int(wanted), int(wanted)
    try:
        entry = pwd.getpwnam(wanted)
    except KeyError:
        return NOBODY, NOBODY
    return entry.pw_uid, entry.pw_gid


def _ancestors(path: str) -> list[str]:
    parents = list(Path(path).parents)[::-1][1:]  # without "/"
    return [str(p) for p in parents]


def _bind(source: str, target: str) -> list[str]:
    """--ro-bind, with the parents of the target created traversable (bubblewrap copies the
    mode of the host's directories: /root would be 0700 and hide the interpreter)."""
    args = []
    for parent in _ancestors(target):
        args += ["--perms", "0755", "--dir", parent]
    return [*args, "--ro-bind", source, target]


def _root_entries() -> list[str]:
    args = []
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _runner_libraries() -> list[tuple[str, str]]:
    binds = [
        (str(Path(RestrictedPython.__file__).resolve().parent), "/sandbox/lib/RestrictedPython")
    ]
    if pyseccomp is None:
        return binds
    return [*binds, (str(Path(pyseccomp.__file__).resolve()), "/sandbox/lib/pyseccomp.py")]


def bwrap_command(identity: tuple[int, int] | None) -> list[str]:
    python = _interpreter()
    prefix = sys.base_prefix
    cmd = [bwrap_path(), "--die-with-parent", "--new-session", "--clearenv",
           "--hostname", "sandbox"]  # fmt: skip
    if identity is None:
        # Unprivileged: bubblewrap's own user namespace maps the worker's uid; it mounts /proc.
        cmd += ["--unshare-all", "--cap-drop", "ALL", "--proc", "/proc"]
    else:
        # As root, no user namespace here (it would map the sandbox's uid onto host uid 0):
        # the runner mounts /proc and drops to the sandbox user itself before anything else.
        cmd += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
                "--unshare-cgroup-try", "--dir", "/proc"]  # fmt: skip
    cmd += ["--ro-bind", "/usr", "/usr", *_root_entries(), *_bind(prefix, prefix)]
    for source, target in _runner_libraries():
        cmd += _bind(source, target)
    cmd += [*_bind(str(SANDBOX_DIR), "/loops/sandbox"), "--dev", "/dev", "--tmpfs", "/tmp",
            "--chdir", "/"]  # fmt: skip
    if not python.startswith(prefix) and not python.startswith("/usr/"):
        cmd += _bind(python, python)
    cmd += ["--", python, "-I", "-S", "-B", "/loops/sandbox/zygote.py", "--lib", "/sandbox/lib",
            "--seccomp", "--empty-network"]  # fmt: skip
    if identity is not None:
        cmd += ["--uid", str(identity[0]), "--gid", str(identity[1])]
    return cmd


def process_command(identity: tuple[int, int] | None) -> list[str]:
    """Fallback without bubblewrap (started in a session of its own): the zygote ties its
    life to this worker's thread itself, as bubblewrap's --die-with-parent would (no
    preexec_fn: a fork of a worker with lanes, runs.engine.turns, must run no Python)."""
    lib = str(Path(RestrictedPython.__file__).resolve().parent.parent)
    cmd = [_interpreter(), "-I", "-S", "-B", str(SANDBOX_DIR / "zygote.py"), "--lib", lib,
           "--seccomp", "--best-effort", "--die-with", str(os.getpid())]  # fmt: skip
    if identity is not None:
        cmd += ["--uid", str(identity[0]), "--gid", str(identity[1])]
    return cmd


class MessageReader:
    """JSON lines from an execution's socket: each at most `limit` bytes, with a deadline."""

    def __init__(self, fd: int, limit: int):
        self.fd = fd
        self.limit = limit
        self.buffer = bytearray()
        self.scanned = 0

    def readline(self, deadline: float, pause=None) -> bytes | None:
        """The next line, None at the end. `pause()`, if given, is asked before each wait how
        long it may last (None: until the deadline), and asked again when that time is up."""
        while True:
            newline = self.buffer.find(b"\n", self.scanned)
            if newline >= self.limit:
                raise MessageTooLarge
            if newline >= 0:
                line = bytes(self.buffer[: newline + 1])
                del self.buffer[: newline + 1]
                self.scanned = 0
                return line
            self.scanned = len(self.buffer)
            if len(self.buffer) > self.limit:
                raise MessageTooLarge
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            limit = pause() if pause is not None else None
            ready, _, _ = select.select([self.fd], [], [], min(remaining, limit or remaining))
            if not ready:
                if limit is not None and limit < remaining:
                    continue
                raise TimeoutError
            try:
                chunk = os.read(self.fd, 1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self.buffer += chunk


def _refusal(line: bytes, exc: "strict_json.JsonValueError") -> dict | None:
    """A well-formed message holding a value that cannot be stored (NaN, a NUL, a lone
    surrogate, deep nesting) becomes a "refused" message naming what it was for, so that the
    worker can fail that step clearly; None when the line is not even a message."""
    try:
        original = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(original, dict) or not isinstance(original.get("op"), str):
        return None
    names = {k: original.get(k) for k in ("op", "key", "name", "kind")}
    return {
        "op": protocol.REFUSED,
        "reason": exc.message,
        "original": {k: v for k, v in names.items() if isinstance(v, str) and _storable(v)},
    }


def _storable(text: str) -> bool:
    return len(text) <= 300 and strict_json.SURROGATE.search(text) is None and "\x00" not in text


def _parse(line: bytes) -> dict:
    """A message from an execution, refused unless every value in it can be stored."""
    message = strict_json.parse(line)
    if not isinstance(message, dict) or not isinstance(message.get("op"), str):
        raise ValueError("a message must be an object with an 'op'")
    return message


class Zygote:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.control: socket.socket | None = None
        self.mode = ""
        self.info: dict = {}
        self.owner_pid = os.getpid()
        self.retry_at = 0.0  # time.monotonic() before which a failed start is not tried again

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.owner_pid == os.getpid()

    def ready(self) -> bool:
        """Whether the zygote runs, started now if need be. One that cannot start is logged
        and not tried again for RETRY_SECONDS: meanwhile its lane claims no run (a run it
        claimed would wait, `running` in name only, for its lease to run out)."""
        if self.alive():
            return True
        if time.monotonic() < self.retry_at:
            return False
        try:
            self.start()
        except (SandboxError, OSError) as exc:
            self.retry_at = time.monotonic() + RETRY_SECONDS
            logger.error("The sandbox of %s in worker %s did not start; it takes no runs for "
                         "%.0f s: %s", threading.current_thread().name, os.getpid(),
                         RETRY_SECONDS, exc)  # fmt: skip
            return False
        return True

    def start(self) -> None:
        self.mode = sandbox_mode()
        identity = sandbox_identity()
        cmd = bwrap_command(identity) if self.mode == "bwrap" else process_command(identity)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={}, close_fds=True, start_new_session=True, cwd="/",
            )  # fmt: skip
        finally:
            theirs.close()
        self.control = ours
        self.owner_pid = os.getpid()
        message = self._receive(time.monotonic() + START_TIMEOUT)
        if not message or message.get("op") != protocol.READY:
            proc = self.proc
            self.stop()
            why = proc.stderr.read()[-2000:].decode(errors="replace").strip() or "no message"
            raise SandboxError(f"the sandbox did not start ({self.mode} mode): {why}")
        self.info = message

    def stop(self) -> None:
        if self.proc is not None and self.owner_pid == os.getpid():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
        if self.control is not None and self.owner_pid == os.getpid():
            self.control.close()
            if self.proc is not None and self.proc.stderr is not None and self.info:
                self.proc.stderr.close()
        self.proc = None
        self.control = None

    def _receive(self, deadline: float) -> dict | None:
        """The zygote's next control message, or None if it is gone or silent."""
        remaining = max(deadline - time.monotonic(), 0)
        ready, _, _ = select.select([self.control], [], [], remaining)
        if not ready:
            return None
        try:
            data = self.control.recv(CONTROL_BYTES)
            return json.loads(data) if data else None
        except (OSError, ValueError):
            return None

    def execute(self, request: dict, on_message, *, limits: dict, deadline: float,
                pause=None) -> ExitInfo:  # fmt: skip
        """Run one execution. `on_message(message, size)` handles each message and returns
        the reply for requests (or None). `limits` is all the zygote learns of the execution:
        cpu_seconds, memory_mb, wall_seconds, max_processes. `pause()` bounds each wait for the
        next message (MessageReader.readline)."""
        if not self.alive():
            self.start()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            try:
                order = json.dumps({"op": protocol.EXEC, "limits": limits}).encode()
                socket.send_fds(self.control, [order], [theirs.fileno()])
            except OSError:
                self.stop()
                return ExitInfo(crashed=True)
            finally:
                theirs.close()
            return self._converse(ours, request, on_message, deadline, pause)

    def _converse(self, sock: socket.socket, request: dict, on_message, deadline: float,
                  pause=None):  # fmt: skip
        info = ExitInfo()
        backstop = deadline + EXIT_GRACE
        reader = MessageReader(sock.fileno(), settings.LOOPS_MAX_MESSAGE_BYTES)
        # If the execution is gone already, its exit says why.
        with contextlib.suppress(OSError):
            sock.settimeout(max(backstop - time.monotonic(), 0.001))
            sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        sock.settimeout(None)
        while True:
            try:
                line = reader.readline(backstop, pause)
            except MessageTooLarge:
                info.protocol_error = (
                    f"The execution sent a message over the limit of "
                    f"{settings.LOOPS_MAX_MESSAGE_BYTES} bytes"
                )
                break
            except TimeoutError:
                break
            if line is None:
                break
            try:
                message = _parse(line)
            except strict_json.JsonValueError as exc:
                message = _refusal(line, exc)
                if message is None:
                    info.protocol_error = f"The execution sent a malformed message: {exc.message}"
                    break
            except ValueError:
                info.protocol_error = "The execution sent a malformed message"
                break
            if message["op"] == protocol.SEALED:
                info.sealed = message
                continue
            if message["op"] == protocol.SEAL_FAILED:
                info.seal_error = str(message.get("message", ""))[:1000]
                continue
            try:
                reply = on_message(message, len(line))
            except MessageRejected as exc:
                info.protocol_error = str(exc)
                break
            if reply is not None:
                # If it ended meanwhile, reading on finds the end.
                with contextlib.suppress(OSError):
                    sock.sendall(json.dumps(reply, separators=(",", ":")).encode() + b"\n")
        if info.protocol_error or time.monotonic() >= backstop:
            self._kill()
        return self._finish(info, backstop)

    def _kill(self) -> None:
        try:
            self.control.send(json.dumps({"op": protocol.KILL}).encode())
        except OSError:
            self.stop()

    def _finish(self, info: ExitInfo, backstop: float) -> ExitInfo:
        if self.control is None:
            info.crashed = True
            return info
        message = self._receive(max(backstop, time.monotonic() + EXIT_GRACE))
        if not message or message.get("op") != protocol.EXIT:
            self.stop()
            info.crashed = True
            return info
        info.code = message.get("code")
        info.signal = message.get("signal")
        info.timed_out = bool(message.get("timed_out"))
        info.killed = bool(message.get("killed"))
        info.cpu_ms = int(message.get("cpu_ms") or 0)
        if message.get("seal_failed") and not info.seal_error:
            info.seal_error = "the execution could not be sealed"
        return info


_local = threading.local()


def get_zygote() -> Zygote:
    """This thread's zygote: one per lane of a worker (runs.engine.turns), since a zygote runs
    one execution at a time; a forked worker never reuses its parent's. A zygote dies with the
    thread that started it (bubblewrap's --die-with-parent follows the thread)."""
    zygote = getattr(_local, "zygote", None)
    if zygote is None or zygote.owner_pid != os.getpid():
        zygote = _local.zygote = Zygote()
    return zygote


def ready() -> bool:
    """Whether this thread's sandbox is running, started now if need be (Zygote.ready): a lane
    asks before it claims a run, and each lane asks as its worker starts, so that a worker's
    first runs do not wait for sandboxes to start."""
    return get_zygote().ready()
