"""Keep a process's secrets out of reach of the commands it starts: out of their
environment (`without_secrets`), and out of /proc (`make_undumpable`).

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
import re
import sys
from collections.abc import Mapping

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
# Environment variables whose names say they hold a secret (GITHUB_TOKEN, ANTHROPIC_API_KEY)
SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
log = logging.getLogger(__name__)


def without_secrets(environ: Mapping[str, str], keep_prefix: str | None = None) -> dict[str, str]:
    """`environ` less every variable whose name says it holds a secret (SECRET_NAME), but
    those starting with `keep_prefix` (a program's own settings, e.g. PREFECT_)."""
    return {
        name: value
        for name, value in environ.items()
        if not SECRET_NAME.search(name) or (keep_prefix and name.startswith(keep_prefix))
    }


def make_undumpable() -> bool:
    """Mark this process not dumpable; False where that is not possible (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("could not mark the process not dumpable: errno %d", ctypes.get_errno())
        return False
    return True
