"""Processes that commands left running outside their process groups, found and ended.

A command's timeout or end kills its whole process group, but a process that leaves the
group on purpose (`setsid`, a daemon's double fork, `pg_ctl start`) escapes that. As CI
runners do (GitHub Actions' RUNNER_TRACKING_ID, Jenkins' BUILD_ID), commands carry markers
in their environment, which what they start inherits: when the scope of a marker ends (a
pipeline run, a fleet issue), the processes that still carry it are ended, SIGTERM, then
SIGKILL after a grace period, each with the process group it leads.

The variable holds a comma-separated list, so that a command of a nested scope (an issue
of a fleet run, a pipeline run by a task of another) carries the outer markers too.

Limits: a process that leaves its group and also rewrites its environment's memory is not
found (`redis-server --daemonize yes` does both): started in the foreground under a shell
that stays (`setsid sh -c 'redis-server; :' &`), it goes with that shell's group. A process
meant to outlive its scope is started without the variable (`env -u
PARALLEL_AGENTS_RUN_MARKER ...`). Without /proc (not Linux), nothing is found.
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

from flows.interrupts import SIGNAL_CHECK_S

log = logging.getLogger(__name__)

MARKER_VAR = "PARALLEL_AGENTS_RUN_MARKER"
PROC = Path("/proc")
END_GRACE_SECONDS = 3.0
KILL_WAIT_SECONDS = 1.0  # for SIGKILLed processes to be gone before a scan looks again
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
    """On leaving the block, end the processes that carry `marker` (started in the block)."""
    since = last_pid()
    try:
        yield
    finally:
        end_leftovers(marker, since)


def last_pid() -> int | None:
    """The last process id the system gave out (None: not known here). A process that
    carries a marker started after the marker was made, so its id was given out after the
    marker's scope began: `end_leftovers` reads the environment of those alone."""
    try:
        return int((PROC / "sys/kernel/ns_last_pid").read_text())
    except (OSError, ValueError):
        return None


def end_leftovers(
    marker: str, since: int | None = None, grace: float = END_GRACE_SECONDS
) -> list[Leftover]:
    """End the processes that carry `marker` and the groups they lead, logging which; each
    process found, once, in the order found. `since`: `last_pid()` before the marker was
    handed out, if known. Never raises an error (logged instead): what the scope did
    matters more than its cleanup."""
    ended: dict[int, Leftover] = {}
    try:
        for _ in range(MAX_ROUNDS):
            found = [f for f in find_leftovers(marker, since) if f.pid not in ended]
            if not found:
                break
            ended.update((leftover.pid, leftover) for leftover in found)
            _end(marker, [leftover.pid for leftover in found], grace)
        else:
            if still := find_leftovers(marker, since):
                log.warning("still running after %d rounds: %s", MAX_ROUNDS,
                            ", ".join(map(str, still)))  # fmt: skip
    except Exception:
        log.exception("could not end the processes left running with marker %s", marker)
    if ended:
        what = "1 process" if len(ended) == 1 else f"{len(ended)} processes"
        log.warning(
            "ended %s left running outside their commands' process groups (setsid, or a "
            "daemon): %s", what, ", ".join(map(str, ended.values())),
        )  # fmt: skip
    return list(ended.values())


def find_leftovers(marker: str, since: int | None = None) -> list[Leftover]:
    """The processes (other than this one) whose environment carries `marker`; with
    `since` (see `last_pid`), only those among the processes started after it."""
    if not marker:
        return []
    try:
        pids = [int(name) for name in os.listdir(PROC) if name.isdigit()]
    except OSError:
        return []
    now = last_pid() if since is not None else None
    if since is not None and now is not None:
        if now >= since:  # ids are given out in order, and start again from low ones
            pids = [pid for pid in pids if since < pid <= now]
        else:
            pids = [pid for pid in pids if pid > since or pid <= now]
    return [
        Leftover(pid, _command_line(PROC / str(pid)))
        for pid in pids
        if pid != os.getpid() and _carries(PROC / str(pid), marker)
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
        """Signal it, and the group it led: the group's id is not reused while the group
        has members, even once its leader has exited."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.leads_group:
                os.killpg(self.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, sig)
            elif _carries(PROC / str(self.pid), self.marker):
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
            for process in held:
                if process in running or process.leads_group:  # its group may outlive it
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
        exited = {fd for fd, _ in poll.poll(min(left, SIGNAL_CHECK_S) * 1000)}
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
        return " ".join(" ".join(arg.decode(errors="replace").split()) for arg in argv)[:200]
    return "?"
