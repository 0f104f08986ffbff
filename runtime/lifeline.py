"""A child process of the router never outlives it (workers, validation, the prediction log's writer)."""

from __future__ import annotations

import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when the router dies, even by SIGKILL.

    The check after ``prctl`` closes the race where the router died before it.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the socket EOF still ends us
        pass
    if os.getppid() != parent_pid:
        os._exit(0)
