"""Sealing one execution inside the sandbox: its own namespaces, /tmp and /proc, its limits,
no capabilities, and the seccomp allow-list.

Runs inside the sandbox (the standard library and pyseccomp only). The zygote builds the
seccomp programs once, before it serves anything; for each execution it forks the execution
straight into fresh namespaces (`fork_into_namespaces`: one clone(2), the child is PID 1 of its
new PID namespace), which maps its own ids (`map_own_ids`) and seals itself (`seal_process`,
then `seal_limits` once its limits arrive) before it reads a byte of the organization's code or
input. When PID 1 ends, the kernel kills everything else in its namespace, so nothing an
execution starts outlives it (pid_namespaces(7)); its mount, IPC and user namespaces disappear
with their last process, taking its /tmp and its IPC objects along.

Under bubblewrap the network namespace is bubblewrap's, one per zygote, empty but for loopback,
and seccomp allows AF_UNIX sockets only. A zygote runs one execution at a time and all of an
execution's processes are gone before the next one is made, so no socket of one execution meets
another; a network namespace per execution cost a millisecond of CPU for nothing more
(bench/README.md). Without bubblewrap the zygote shares the host's network namespace, and each
execution gets one of its own (ISOLATED_NETWORK), which keeps it from the host's abstract
unix sockets.
"""

import ctypes
import errno
import os
import resource
import signal
import sys
import types

libc = ctypes.CDLL(None, use_errno=True)
# Calls that must keep the GIL held (the raw clone): a PyDLL does not release it.
python_libc = ctypes.PyDLL(None, use_errno=True)
python_libc.syscall.restype = ctypes.c_long
python = ctypes.pythonapi

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 0x40000

NAMESPACES = (
    os.CLONE_NEWUSER | os.CLONE_NEWPID | os.CLONE_NEWNS | os.CLONE_NEWIPC | os.CLONE_NEWUTS
)  # fmt: skip
# Flags that would let a thread or child leave the execution's namespaces.
CLONE_NAMESPACE_FLAGS = (
    NAMESPACES | os.CLONE_NEWNET | os.CLONE_NEWCGROUP | 0x80  # 0x80: CLONE_NEWTIME
)  # fmt: skip
CLONE_THREAD = 0x10000
# What an execution adds when the zygote's own network namespace is the host's.
ISOLATED_NETWORK = os.CLONE_NEWNET
SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(os.uname().machine)

TMP_BYTES = 16 * 1024 * 1024
TMP_INODES = 1024
MAX_OPEN_FILES = 64
MAX_FILE_BYTES = 1024 * 1024


class SealError(RuntimeError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise SealError(f"{what}: {os.strerror(code)}")


def _prctl(option: int, arg: int = 0) -> int:
    return libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)


def die_with_parent() -> None:
    _check(_prctl(PR_SET_PDEATHSIG, signal.SIGKILL), "prctl(PR_SET_PDEATHSIG)")


# --- Namespaces --------------------------------------------------------------------------------


def fork_into_namespaces(extra: int = 0) -> int:
    """fork(2), with the child in new namespaces (NAMESPACES and `extra`): the child is PID 1
    of its own PID namespace. Returns 0 in the child and its pid in the parent, like os.fork().

    One clone(2) where unshare(2) would need a process in between: unshare(CLONE_NEWPID) moves
    only the caller's next child. Python has no clone, so this is os.fork's own sequence
    around the raw system call (the interpreter's before/after-fork hooks, the GIL held
    throughout); glibc's fork handlers have nothing to do in the single-threaded zygote."""
    if SYS_CLONE is None:
        raise OSError(errno.ENOSYS, "clone into namespaces: unknown architecture")
    python.PyOS_BeforeFork()
    flags = ctypes.c_ulong(NAMESPACES | extra | signal.SIGCHLD)
    pid = python_libc.syscall(SYS_CLONE, flags, 0, 0, 0, 0)
    code = ctypes.get_errno()
    if pid == 0:
        python.PyOS_AfterFork_Child()
        return 0
    python.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(code, f"clone into namespaces: {os.strerror(code)}")
    return pid


def map_own_ids(uid: int, gid: int) -> None:
    """In a new user namespace: map only this process's own uid and gid, as its parent knew
    them (the execution stays the same unprivileged host user)."""
    # Writing our own uid_map needs /proc/self to be ours; a process that changed its uid is
    # not dumpable and /proc/self belongs to root.
    _prctl(PR_SET_DUMPABLE, 1)
    # Plain descriptors: the io stack's objects (and its locale lookup) would be the first
    # things this fresh process writes, each a page fault of its own.
    for name, text in ((b"setgroups", b"deny"), (b"uid_map", b"%d %d 1" % (uid, uid)),
                       (b"gid_map", b"%d %d 1" % (gid, gid))):  # fmt: skip
        fd = os.open(b"/proc/self/" + name, os.O_WRONLY)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)
    _prctl(PR_SET_DUMPABLE, 0)


def _mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int,
           data: bytes | None = None) -> int:  # fmt: skip
    return libc.mount(source, target, fstype, ctypes.c_ulong(flags), data)


def private_filesystems() -> str:
    """An empty /tmp and a /proc that shows only this execution's PID namespace.

    Returns "own" when /proc is the execution's own, "hidden" when the kernel refused a new
    proc mount (bubblewrap's /proc has read-only overmounts when bubblewrap runs unprivileged)
    and /proc was covered with an empty tmpfs instead."""
    _check(_mount(None, b"/", None, MS_REC | MS_PRIVATE), "making mounts private")
    options = f"size={TMP_BYTES},nr_inodes={TMP_INODES},mode=1777".encode()
    _check(_mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options), "mounting /tmp")
    if _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC) == 0:
        return "own"
    _check(
        _mount(
            b"tmpfs", b"/proc", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4096,mode=555"
        ),
        "hiding /proc",
    )
    return "hidden"


# --- Privileges and limits ---------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]  # fmt: skip


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 63


def drop_capabilities(last_cap: int) -> None:
    """No capability in any set, none to regain (bounding set empty, no_new_privs)."""
    for cap in range(last_cap + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    libc.prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")


def _limit(kind: int, soft: int, hard: int | None = None) -> None:
    resource.setrlimit(kind, (soft, soft if hard is None else hard))


def set_limits(limits: dict) -> None:
    """Resource limits of the execution. With fork refused (the default) the execution is one
    process, so these per-process limits are per-execution limits."""
    cpu = int(limits.get("cpu_seconds", 10))
    _limit(resource.RLIMIT_CPU, cpu, cpu + 1)
    _limit(resource.RLIMIT_AS, int(limits.get("memory_mb", 512)) * 1024 * 1024)
    _limit(resource.RLIMIT_NOFILE, MAX_OPEN_FILES)
    _limit(resource.RLIMIT_FSIZE, MAX_FILE_BYTES)
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_MEMLOCK, 0)
    _limit(resource.RLIMIT_MSGQUEUE, 0)
    # Counted per user namespace: the processes (and threads) of this execution only.
    _limit(resource.RLIMIT_NPROC, max(int(limits.get("max_processes", 1)), 1))


# --- Seccomp -----------------------------------------------------------------------------------

# Everything a Python program needs once it is running; the rest answers EPERM. Notably absent:
# execve, ptrace, process_vm_*, mount and the new mount API, unshare, setns, bpf, keyctl,
# perf_event_open, userfaultfd, io_uring_*, memfd_create, open_by_handle_at, pidfd_getfd,
# kexec/modules, personality, SysV IPC and message queues, set*id, capset and chroot.
ALLOWED_SYSCALLS = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2",
    "pwritev2", "close", "close_range", "fstat", "stat", "lstat", "newfstatat", "statx",
    "lseek", "mmap", "munmap", "mremap", "mprotect", "madvise", "brk", "msync", "mincore",
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigsuspend", "sigaltstack", "futex", "futex_waitv", "set_robust_list",
    "get_robust_list", "rseq", "set_tid_address", "clock_gettime", "clock_getres",
    "clock_nanosleep", "nanosleep", "gettimeofday", "time", "getpid", "gettid", "getppid",
    "getuid", "geteuid", "getgid", "getegid", "getresuid", "getresgid", "getgroups", "getpgrp",
    "getpgid", "getsid", "setsid", "setpgid", "getcwd", "getrandom", "openat", "open", "creat",
    "access",
    "faccessat", "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "fcntl",
    "dup", "dup2", "dup3", "pipe", "pipe2", "poll", "ppoll", "select", "pselect6",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "shutdown", "getsockopt", "setsockopt", "getsockname", "getpeername", "bind", "listen",
    "accept", "accept4", "connect", "exit", "exit_group", "wait4", "waitid", "kill", "tgkill",
    "tkill", "prlimit64", "getrlimit", "setrlimit", "getrusage", "times", "sched_yield",
    "sched_getaffinity", "sched_getparam", "sched_getscheduler", "getpriority", "uname",
    "sysinfo", "umask", "mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "rmdir", "ftruncate", "truncate", "fsync", "fdatasync", "fchmod", "chmod",
    "fchmodat", "utimensat", "utime", "utimes", "link", "linkat", "symlink", "symlinkat",
    "flock", "fallocate", "statfs", "fstatfs", "chdir", "fchdir", "arch_prctl", "alarm",
    "setitimer", "getitimer", "pause", "restart_syscall", "sendfile", "copy_file_range",
    "capget", "sched_getattr",
)  # fmt: skip
# ioctl requests Python's io and os modules make; TIOCSTI and every device ioctl are refused.
ALLOWED_IOCTLS = (
    0x5401,
    0x541B,
    0x5421,
    0x5451,
    0x5450,
)  # TCGETS FIONREAD FIONBIO FIOCLEX FIONCLEX
# prctl options that only read, or name the thread.
ALLOWED_PRCTLS = (3, 15, 16, 21, 23, 39)  # GET_DUMPABLE SET_NAME GET_NAME GET_SECCOMP
#                                            CAPBSET_READ GET_NO_NEW_PRIVS


def _load_pyseccomp():
    """pyseccomp, imported beside a ctypes.util that knows two names. The real one would run
    ldconfig (no programs here), and it imports subprocess and so threading, whose after-fork
    handler would cost every execution forked from the zygote ~100 page faults (bench/README.md);
    pyseccomp only asks it where libc and libseccomp are, as it is imported."""
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    stub = types.ModuleType("ctypes.util")
    stub.find_library = known.get
    real = sys.modules.get("ctypes.util")
    sys.modules["ctypes.util"], ctypes.util = stub, stub
    try:
        import pyseccomp
    finally:
        if real is None:
            del sys.modules["ctypes.util"], ctypes.util
        else:
            sys.modules["ctypes.util"], ctypes.util = real, real
    return pyseccomp


def _export(syscall_filter) -> bytes:
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb", closefd=False) as f:
            syscall_filter.export_bpf(f)
        os.close(write_end)
        write_end = -1
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def _add(syscall_filter, action, name: str, *args) -> None:
    try:
        syscall_filter.add_rule(action, name, *args)
    except (RuntimeError, ValueError, OSError):  # a syscall this architecture lacks
        return


# What the zygote and each execution's PID 1 do beyond an execution's allow-list, before PID 1
# has sealed itself: clone into new namespaces (and fork, for executions allowed to), watch
# an execution through a pidfd, mount its /tmp and /proc, drop capabilities, load a filter.
ZYGOTE_SYSCALLS = ("pidfd_open", "mount", "capset", "fork", "vfork")
ZYGOTE_PRCTLS = (1, 4, 22, 24, 38, 47)  # SET_PDEATHSIG SET_DUMPABLE SET_SECCOMP CAPBSET_DROP
#                                         SET_NO_NEW_PRIVS CAP_AMBIENT


def build_zygote_filter() -> bytes:
    """The zygote's own filter, which every execution inherits: the executions' allow-list and
    what the zygote and PID 1 need besides (ZYGOTE_SYSCALLS, ZYGOTE_PRCTLS, clone with any
    flags). Everything else answers EPERM. Each execution adds `build_execution_filter`,
    which refuses those again: the two together are exactly an execution's allow-list, and
    the small one is all that loading costs each execution (a long filter is checked and
    compiled by the kernel as it is loaded, a quarter of a millisecond each time)."""
    seccomp = _load_pyseccomp()
    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    allow = seccomp.ALLOW
    for name in (*ALLOWED_SYSCALLS, *ZYGOTE_SYSCALLS, "clone"):
        _add(f, allow, name)
    for name in ("socket", "socketpair"):
        _add(f, allow, name, seccomp.Arg(0, seccomp.EQ, 1))  # AF_UNIX
    for request in ALLOWED_IOCTLS:
        _add(f, allow, "ioctl", seccomp.Arg(1, seccomp.EQ, request))
    for option in (*ALLOWED_PRCTLS, *ZYGOTE_PRCTLS):
        _add(f, allow, "prctl", seccomp.Arg(0, seccomp.EQ, option))
    # glibc tries clone3 first and falls back to clone on ENOSYS, where the flags can be seen.
    _add(f, seccomp.ERRNO(errno.ENOSYS), "clone3")
    return _export(f)


def build_execution_filter(*, allow_fork: bool) -> bytes:
    """What an execution's PID 1 adds to the zygote's filter once its limits are set: the
    zygote's own needs refused again. Threads may be created; new processes only when the
    operator allows more than one process per execution, and never in new namespaces."""
    seccomp = _load_pyseccomp()
    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in ZYGOTE_SYSCALLS:
        if allow_fork and name in ("fork", "vfork"):
            continue
        _add(f, eperm, name)
    for option in ZYGOTE_PRCTLS:
        _add(f, eperm, "prctl", seccomp.Arg(0, seccomp.EQ, option))
    for bit in range(64):
        if CLONE_NAMESPACE_FLAGS & (1 << bit):
            _add(f, eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, 1 << bit, 1 << bit))
    if not allow_fork:  # a clone that is not a thread is a new process
        _add(f, eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
    return _export(f)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(program: bytes) -> None:
    """Install a BPF program built by build_*_filter (needs no_new_privs). Filters stack: a
    call is allowed only if every filter loaded allows it."""
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    _check(_prctl(PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")
    result = libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER),
                        ctypes.byref(fprog), 0, 0)  # fmt: skip
    _check(result, "loading the seccomp filter")


# --- The whole seal ----------------------------------------------------------------------------


def seal_process(last_cap: int, *, namespaces: bool = True) -> dict:
    """First half, in PID 1 of fresh namespaces, before the execution is handed anything:
    its own /tmp and /proc, no capabilities. Without `namespaces` (the fallback without
    bubblewrap or user namespaces) only the capabilities."""
    die_with_parent()
    proc = private_filesystems() if namespaces else "shared"
    os.chdir("/tmp")
    drop_capabilities(last_cap)
    # Its own /proc/self belongs to it (the zygote gave up root, which left it non-dumpable);
    # nothing else of its uid can see it, and ptrace is refused.
    _prctl(PR_SET_DUMPABLE, 1)
    return {"proc": proc, "namespaces": namespaces}


def seal_limits(limits: dict, program: bytes | None) -> dict:
    """Second half, once the execution's limits have arrived (and still before its code and
    input): resource limits and the seccomp allow-list."""
    set_limits(limits)
    if program is not None:
        load_filter(program)
    return {"seccomp": program is not None}


LAST_CAPABILITY = _last_capability()
