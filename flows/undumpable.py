"""Keep a process's secrets out of reach of the commands it starts.

An agent's commands run as the worker's user, with a scrubbed environment; but any process
of the same user may read another's environment and memory through /proc
(`/proc/<pid>/environ`, `/proc/<pid>/mem`), so a command could read the tokens of its
parent. A process marked not dumpable (Linux `prctl(PR_SET_DUMPABLE, 0)`) has its /proc
files owned by root and refuses ptrace to processes of its own user. The mark is not
inherited across exec: the commands themselves stay ordinary processes.

It does not stop root, nor a command that writes files the worker later trusts:
isolating the agent (a container, another user) is the deployment's job.
"""

from __future__ import annotations

import ctypes
import logging
import sys

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
log = logging.getLogger(__name__)


def make_undumpable() -> bool:
    """Mark this process not dumpable; False where that is not possible (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("could not mark the process not dumpable: errno %d", ctypes.get_errno())
        return False
    return True
