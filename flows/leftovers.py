"""Processes a run's commands left behind outside their process groups, found and ended.

A command's timeout or end kills its whole process group, but a process that leaves the
group on purpose (`setsid`, a daemon's double fork: `pg_ctl start`, `redis-server
--daemonize yes`) escapes that. As CI runners do (GitHub Actions' RUNNER_TRACKING_ID,
Jenkins' BUILD_ID), every command of a run carries a marker in its environment, which
what it starts inherits; when the run ends, the processes that still carry it are ended:
SIGTERM, then SIGKILL after a grace period.

A command that means to leave something running past its run removes the variable from
that process's environment. Found through /proc: on a system without it nothing is found.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARKER_VAR = "PARALLEL_AGENTS_RUN_MARKER"
PROC = Path("/proc")
END_GRACE_SECONDS = 3.0
MAX_ROUNDS = 3  # what ended processes started meanwhile is ended too, a few times over


def new_marker() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str  # its command line, for the log

    def __str__(self) -> str:
        return f"{self.pid} ({self.command})"


def find_leftovers(marker: str, proc: Path = PROC) -> list[Leftover]:
    """The processes (other than this one) whose environment carries `marker`."""
    wanted = f"{MARKER_VAR}={marker}".encode()
    found = []
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    for name in names:
        if name.isdigit() and int(name) != os.getpid() and _carries(proc / name, wanted):
            found.append(Leftover(int(name), _command_line(proc / name)))
    return found


def end_leftovers(marker: str, grace: float = END_GRACE_SECONDS) -> list[Leftover]:
    """End the processes that carry `marker` (see the module's docstring); the ones that
    were found, in the order found."""
    ended: list[Leftover] = []
    for _ in range(MAX_ROUNDS):
        found = find_leftovers(marker)
        if not found:
            break
        ended += found
        _end(marker, [leftover.pid for leftover in found], grace)
    return ended


def _end(marker: str, pids: list[int], grace: float) -> None:
    """SIGTERM, then SIGKILL what has not exited after `grace`. Each process is held by a
    pidfd first, and checked to carry the marker still: a pid reused meanwhile is another
    process's, which no signal reaches."""
    wanted = f"{MARKER_VAR}={marker}".encode()
    held: list[int] = []
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:  # exited meanwhile
            continue
        if _carries(PROC / str(pid), wanted) and _signal(pidfd, signal.SIGTERM):
            held.append(pidfd)
        else:
            os.close(pidfd)
    try:
        deadline = time.monotonic() + grace
        running = list(held)
        while running and (left := deadline - time.monotonic()) > 0:
            exited, _, _ = select.select(running, [], [], left)  # readable: it has exited
            running = [pidfd for pidfd in running if pidfd not in exited]
        for pidfd in running:
            _signal(pidfd, signal.SIGKILL)
    finally:
        for pidfd in held:
            os.close(pidfd)


def _signal(pidfd: int, sig: signal.Signals) -> bool:
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _carries(process: Path, wanted: bytes) -> bool:
    try:
        environ = (process / "environ").read_bytes()
    except OSError:  # exited, or another user's
        return False
    return wanted in environ.split(b"\0")


def _command_line(process: Path) -> str:
    with contextlib.suppress(OSError):
        argv = (process / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return " ".join(arg.decode(errors="replace") for arg in argv)[:200]
    return "?"
