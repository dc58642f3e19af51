"""The worker's side of the sandbox: starts the zygote runner and speaks to it over pipes.

The runner is a separate program started with an empty environment and no inherited
descriptors (never a fork of this DB-connected worker), inside bubblewrap where available.
Each worker process owns one zygote, so executions never share a sandbox at the same time.
"""

import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import RestrictedPython
from django.conf import settings

SANDBOX_DIR = Path(__file__).resolve().parent / "sandbox"
NOBODY = 65534
START_TIMEOUT = 15.0


class SandboxError(RuntimeError):
    pass


@dataclass
class ExitInfo:
    code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cpu_ms: int = 0
    crashed: bool = False


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
        [path, "--unshare-all", "--uid", str(NOBODY), "--gid", str(NOBODY),
         "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64", "--", "/usr/bin/true"],
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


def _root_entries() -> list[str]:
    args = []
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def bwrap_command() -> list[str]:
    python = _interpreter()
    prefix = sys.base_prefix
    restricted = Path(RestrictedPython.__file__).resolve().parent
    cmd = [
        bwrap_path(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", str(NOBODY), "--gid", str(NOBODY), "--clearenv", "--hostname", "sandbox",
        "--ro-bind", "/usr", "/usr", *_root_entries(),
        "--ro-bind", prefix, prefix,
        "--ro-bind", str(restricted), "/sandbox/lib/RestrictedPython",
        "--ro-bind", str(SANDBOX_DIR), "/sandbox/engine",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--chdir", "/tmp",
    ]  # fmt: skip
    if not python.startswith(prefix) and not python.startswith("/usr/"):
        cmd += ["--ro-bind", python, python]
    try:
        import pyseccomp

        cmd += ["--ro-bind", str(Path(pyseccomp.__file__).resolve()), "/sandbox/lib/pyseccomp.py"]
    except ImportError:
        pass
    cmd += ["--", python, "-I", "-S", "-B", "/sandbox/engine/runner.py",
            "--lib", "/sandbox/lib", "--seccomp"]  # fmt: skip
    return cmd


def _world_reachable(path: str) -> bool:
    current = Path(path)
    for parent in [current, *current.parents]:
        if parent.is_dir() and not (parent.stat().st_mode & 0o001):
            return False
    return True


def _process_preexec() -> None:
    """Fallback without bubblewrap: new session, die with the worker, no network, nobody."""
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getuid() == 0:
        with contextlib.suppress(OSError, AttributeError):
            os.unshare(os.CLONE_NEWNET)
        if _world_reachable(_interpreter()):
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)


def process_command() -> list[str]:
    lib = str(Path(RestrictedPython.__file__).resolve().parent.parent)
    return [_interpreter(), "-I", "-S", "-B", str(SANDBOX_DIR / "runner.py"),
            "--lib", lib, "--seccomp"]  # fmt: skip


class LineReader:
    """JSON lines from a pipe, with a deadline (the worker enforces wall-clock time)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.buffer = bytearray()

    def readline(self, deadline: float) -> bytes | None:
        while True:
            newline = self.buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self.buffer[: newline + 1])
                del self.buffer[: newline + 1]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk


class Zygote:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.reader: LineReader | None = None
        self.mode = ""
        self.info: dict = {}
        self.owner_pid = os.getpid()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.owner_pid == os.getpid()

    def start(self) -> None:
        self.mode = sandbox_mode()
        if self.mode == "bwrap":
            cmd, preexec = bwrap_command(), None
        else:
            cmd, preexec = process_command(), _process_preexec
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={}, close_fds=True, preexec_fn=preexec, cwd="/",
        )  # fmt: skip
        self.owner_pid = os.getpid()
        self.reader = LineReader(self.proc.stdout.fileno())
        try:
            line = self.reader.readline(time.monotonic() + START_TIMEOUT)
        except TimeoutError:
            line = None
        if not line:
            self.stop()
            raise SandboxError(f"the sandbox runner did not start ({self.mode} mode)")
        self.info = json.loads(line)

    def stop(self) -> None:
        if self.proc is not None and self.owner_pid == os.getpid():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _write(self, message: dict) -> None:
        self.proc.stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
        self.proc.stdin.flush()

    def execute(self, request: dict, on_message, wall_seconds: float) -> ExitInfo:
        """Run one execution; `on_message(msg)` handles each message and returns the reply
        for requests (or None). Returns how the execution's process ended."""
        if not self.alive():
            self.start()
        # The zygote kills the child at wall_seconds; this is the backstop if it cannot.
        deadline = time.monotonic() + wall_seconds + 5
        try:
            self._write(request)
            while True:
                line = self.reader.readline(deadline)
                if line is None:
                    self.stop()
                    return ExitInfo(crashed=True)
                message = json.loads(line)
                if message.get("op") == "exit":
                    return ExitInfo(
                        code=message.get("code"),
                        signal=message.get("signal"),
                        timed_out=bool(message.get("timed_out")),
                        cpu_ms=int(message.get("cpu_ms") or 0),
                    )
                reply = on_message(message)
                if reply is not None:
                    self._write(reply)
        except TimeoutError:
            self.stop()
            return ExitInfo(timed_out=True)
        except (BrokenPipeError, ValueError):
            self.stop()
            return ExitInfo(crashed=True)


_zygote: Zygote | None = None


def get_zygote() -> Zygote:
    """This process's zygote (a forked worker never reuses its parent's)."""
    global _zygote
    if _zygote is None or _zygote.owner_pid != os.getpid():
        _zygote = Zygote()
    return _zygote
