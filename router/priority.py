"""CPU scheduling priority of worker processes: shadows yield the CPU to live work.

A shadow worker runs under ``SCHED_IDLE``: the kernel runs it only when nothing
else on its core wants to run, and a live process that wakes preempts it at
once. So a shadow sharing a core with the router, a live worker or anything
else takes only spare CPU; when there is none its copies wait, time out or are
dropped, which is what shadow mode promises anyway.

Leaving ``SCHED_IDLE`` (a shadow promoted to live) needs ``CAP_SYS_NICE`` or an
``RLIMIT_NICE`` of at least 20. Without either, a promoted worker would stay
idle-priority while serving callers, so shadows then keep normal priority.
"""

from __future__ import annotations

import logging
import os
import resource

log = logging.getLogger("router.priority")

_CAP_SYS_NICE = 23


def can_restore() -> bool:
    """Whether this process may move a worker out of ``SCHED_IDLE`` again."""
    if not hasattr(os, "SCHED_IDLE"):  # not Linux
        return False
    try:
        if resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20:
            return True
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError, AttributeError):
        pass
    return False


def set_idle(pid: int, idle: bool) -> bool:
    """Put every thread of ``pid`` under ``SCHED_IDLE`` (or back to ``SCHED_OTHER``); True on success.

    Threads the worker starts later inherit the policy of the thread that starts them.
    """
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:  # the process is gone: its replacement gets the policy when it goes live
        return False
    ok = True
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except ProcessLookupError:
            pass
        except OSError as exc:
            log.warning("cannot set the scheduling policy of pid %d thread %d: %s", pid, tid, exc)
            ok = False
    return ok
