"""Processes that commands left running outside their process groups, found and ended.

A command's timeout or end kills its whole process group, but a process that leaves the
group on purpose (`setsid`, a daemon's double fork, `pg_ctl start`) escapes that. As CI
runners do (GitHub Actions' RUNNER_TRACKING_ID, Jenkins' BUILD_ID), commands carry markers
in their environment, which what they start inherits: when the scope of a marker ends (a
pipeline run, a fleet issue), the processes that still carry it are ended, SIGTERM, then
SIGKILL after a grace period, each with the process group it leads.

The variable holds a comma-separated list, so that a command of a nested scope (an issue
of a fleet run, a pipeline run by a task of another) carries the outer markers too.

Limits: a process that rewrites its environment's memory (redis-server's process title
does), or that only root may read (ssh-agent is not dumpable), is not found by its marker:
it is ended only with the process group of one that is. A process meant to outlive its
scope is started without the variable (`env -u PARALLEL_AGENTS_RUN_MARKER ...`). Without
/proc (not Linux), nothing is found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKER_VAR = "PARALLEL_AGENTS_RUN_MARKER"
PROC = Path("/proc")
END_GRACE_SECONDS = 3.0
KILL_WAIT_SECONDS = 1.0  # for SIGKILLed processes to be gone before a scan looks again
WAIT_SLICE_SECONDS = 0.2  # the main thread's waits end this often (flows/interrupts.py)
MAX_ROUNDS = 3  # what ended processes started meanwhile is ended too, a few times over


def new_marker() -> str:
    return uuid.uuid4().hex


def marked(env: Mapping[str, str], *markers: str) -> dict[str, str]:
    """`env` with `markers` added to the markers it carries already."""
    values = [env.get(MARKER_VAR, ""), *markers]
    return {**env, MARKER_VAR: ",".join(value for value in values if value)}


@dataclass(frozen=True)
class Leftover:
    pid: int
    command: str  # its command line, for the log

    def __str__(self) -> str:
        return f"{self.pid} ({self.command})"


@contextlib.contextmanager
def ending_leftovers(marker: str) -> Iterator[None]:
    """On leaving the block, end the processes that carry `marker` (never raises for it:
    what the block raised, or its result, matters more)."""
    try:
        yield
    finally:
        try:
            end_leftovers(marker)
        except Exception:
            log.exception("could not end the processes left running with marker %s", marker)


def end_leftovers(marker: str, grace: float = END_GRACE_SECONDS) -> list[Leftover]:
    """End the processes that carry `marker` and the groups they lead, logging which; each
    process found, once, in the order found."""
    ended: dict[int, Leftover] = {}
    for _ in range(MAX_ROUNDS):
        found = [leftover for leftover in find_leftovers(marker) if leftover.pid not in ended]
        if not found:
            break
        ended.update((leftover.pid, leftover) for leftover in found)
        _end(marker, [leftover.pid for leftover in found], grace)
    if ended:
        what = "1 process" if len(ended) == 1 else f"{len(ended)} processes"
        log.warning(
            "ended %s left running outside their commands' process groups (setsid, or a "
            "daemon): %s", what, ", ".join(map(str, ended.values())),
        )  # fmt: skip
    return list(ended.values())


def find_leftovers(marker: str, proc: Path = PROC) -> list[Leftover]:
    """The processes (other than this one) whose environment carries `marker`."""
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    return [
        Leftover(int(name), _command_line(proc / name))
        for name in names
        if name.isdigit() and int(name) != os.getpid() and _carries(proc / name, marker)
    ]


class _Held:
    """A process held by a pidfd, after it was checked to carry the marker: a pid reused
    meanwhile would be another process's, which no signal reaches. Without pidfds (Linux
    before 5.3) it is signalled by pid, and taken to run while its pid carries the marker."""

    def __init__(self, pid: int, marker: str) -> None:
        self.pid, self.marker = pid, marker
        self.pidfd: int | None = None
        with contextlib.suppress(OSError):  # exited already, or no pidfds here
            self.pidfd = os.pidfd_open(pid)
        self.alive = _carries(PROC / str(pid), marker)
        self.leads_group = False
        with contextlib.suppress(OSError):
            self.leads_group = self.alive and os.getpgid(pid) == pid

    def signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.leads_group:  # its group's id is its pid: not reused while it runs
                os.killpg(self.pid, sig)
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)


def _end(marker: str, pids: list[int], grace: float) -> None:
    """SIGTERM, then SIGKILL what has not exited after `grace`, even if something
    interrupts the wait; then wait a moment for the killed to be gone."""
    held: list[_Held] = []
    running: list[_Held] = []
    try:
        held += [_Held(pid, marker) for pid in pids]
        running = [process for process in held if process.alive]
        for process in running:
            process.signal(signal.SIGTERM)
        running = _wait_for_exit(running, grace)
    finally:
        try:
            for process in running:
                process.signal(signal.SIGKILL)
            _wait_for_exit(running, KILL_WAIT_SECONDS)
        finally:
            for process in held:
                process.close()


def _wait_for_exit(processes: list[_Held], timeout: float) -> list[_Held]:
    """Those of `processes` still running after at most `timeout`, waited for in slices
    (a pidfd turns readable when its process exits)."""
    deadline = time.monotonic() + timeout
    running = list(processes)
    while running and (left := deadline - time.monotonic()) > 0:
        poll = select.poll()
        for process in running:
            if process.pidfd is not None:
                poll.register(process.pidfd, select.POLLIN)
        exited = {fd for fd, _ in poll.poll(min(left, WAIT_SLICE_SECONDS) * 1000)}
        running = [
            process
            for process in running
            if (process.pidfd not in exited if process.pidfd is not None
                else _carries(PROC / str(process.pid), process.marker))
        ]  # fmt: skip
    return running


def _carries(process: Path, marker: str) -> bool:
    try:
        environ = (process / "environ").read_bytes()
    except OSError:  # exited, or another user's
        return False
    prefix = f"{MARKER_VAR}=".encode()
    wanted = marker.encode()
    return any(
        wanted in entry[len(prefix) :].split(b",")
        for entry in environ.split(b"\0")
        if entry.startswith(prefix)
    )


def _command_line(process: Path) -> str:
    with contextlib.suppress(OSError):
        argv = (process / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        return " ".join(arg.decode(errors="replace") for arg in argv)[:200]
    return "?"
