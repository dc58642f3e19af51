"""A process that dies with its parent (Linux's PR_SET_PDEATHSIG), whichever way the parent
ends: a signal, SIGKILL, os._exit. Used for every process a command starts and must not leave
behind."""

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """In the child: get `signum` when the parent (the thread that forked it) ends."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
