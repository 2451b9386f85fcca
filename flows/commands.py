"""Run one command the safe way: argv list or explicit shell, a working directory, a
timeout that kills the whole process group, output to a log file, exact timings.

The child gets its own session (process group). The parent blocks in `os.waitpid`, which
returns the instant the child exits (Popen.wait with a timeout polls, adding latency); the
main thread waits on a pidfd instead, in slices, so Ctrl-C is never held up (see
flows/interrupts.py). A
timer thread enforces the timeout: SIGTERM to the group, then SIGKILL after a grace
period. Stragglers left in the group after the main child exits are killed too, so
nothing a task started outlives it, short of a process that leaves the group on purpose
(`setsid`, a daemon's double fork): those are found by the markers their commands'
environment gives them, and ended with their run (flows/leftovers.py).

A `RunStop` ends the commands of a whole run the same way when the run is interrupted
(SIGTERM, Ctrl-C): the children live in sessions of their own, so no signal sent to the
leader reaches them by itself.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flows.interrupts import SIGNAL_CHECK_S
from flows.rss import RssSampler

log = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 3.0
TAIL_BYTES = 4096
TAIL_LINES = 30


@dataclass(frozen=True)
class CommandOutcome:
    exit_code: int | None  # None when the command could not start
    timed_out: bool
    started_at: datetime
    ended_at: datetime
    peak_rss_mb: float | None  # None when not sampled
    error: str | None = None  # why the command could not start
    interrupted: bool = False  # stopped by its run's RunStop

    @property
    def duration_s(self) -> float:
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.interrupted


class RunStop:
    """Stops the commands of one run at once, e.g. when the run is interrupted: those
    running are killed as on a timeout (SIGTERM to the group, SIGKILL after the grace
    period), none starts after, and `wait` (between retries) returns early. Other work
    registers with `on_stop` to be cut short too (a model's reply being streamed)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[_Watchdog] = set()
        self._callbacks: set[_StopCallback] = set()  # see `on_stop`
        self._stopped = threading.Event()
        self.reason: str | None = None

    def stop(self, reason: str, *, at_once: bool = False) -> None:
        """Stop the run's commands; stopped again (a second Ctrl-C), or `at_once` (no time
        left for a grace period), SIGKILL them now."""
        with self._lock:
            again = self.reason is not None or at_once
            self.reason = self.reason or reason
            self._stopped.set()
            running = list(self._running)
            callbacks = list(self._callbacks)
        for watchdog in running:
            if again:
                watchdog.kill_now()
            else:
                watchdog.interrupt()
        for callback in callbacks:
            callback.call()

    @contextlib.contextmanager
    def on_stop(self, callback: Callable[[], None]) -> Iterator[None]:
        """While in this block, a stop calls `callback` (in the stopping thread; on every
        stop), e.g. to cut a network call short; at once if the run is already stopped.
        Never after the block ends (its exit waits for a call under way): what the work
        hands on after the block (its connection, say) is safe from the callback."""
        registration = _StopCallback(callback)
        with self._lock:
            stopped = self.reason is not None
            self._callbacks.add(registration)
        if stopped:
            registration.call()
        try:
            yield
        finally:
            registration.retire()
            with self._lock:
                self._callbacks.discard(registration)

    def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if the run is stopped meanwhile."""
        self._stopped.wait(seconds)

    def _track(self, watchdog: _Watchdog) -> None:
        with self._lock:
            if self.reason is None:
                self._running.add(watchdog)
                return
        watchdog.interrupt()  # stopped while the command was starting

    def _untrack(self, watchdog: _Watchdog) -> None:
        with self._lock:
            self._running.discard(watchdog)


class _StopCallback:
    """A callback of `RunStop.on_stop`, callable until its block has ended."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._retired = False

    def call(self) -> None:
        with self._lock:
            if self._retired:
                return
            try:
                self._callback()
            except Exception:  # the stop goes on; the work it was for ends some other way
                log.exception("a stop callback failed")

    def retire(self) -> None:
        with self._lock:
            self._retired = True


# Words the shell passes on unchanged (no quotes, expansions, globs, redirections or
# separators) between spaces and tabs (a newline separates commands). A command made only
# of such words means the same without a shell.
_PLAIN_COMMAND = re.compile(r"[ \t]*[A-Za-z0-9_@%+=:,./-]+(?:[ \t]+[A-Za-z0-9_@%+=:,./-]+)*[ \t]*")
# Words that mean something else to the shell than the program of that name, if any
# (builtins whose options differ from the program's, such as `echo -e`, included).
_SHELL_WORDS = frozenset({
    "!", ".", ":", "[[", "alias", "bg", "break", "case", "cd", "command", "continue", "do",
    "done", "echo", "elif", "else", "esac", "eval", "exec", "exit", "export", "fc", "fg", "fi",
    "for", "getopts", "hash", "if", "jobs", "kill", "local", "printf", "pwd", "read",
    "readonly", "return", "set", "shift", "source", "test", "then", "time", "times", "trap",
    "type", "ulimit", "umask", "unalias", "unset", "until", "wait", "while", "{", "}",
})  # fmt: skip


def to_argv(command: str | Sequence[str], path: str | None = None) -> list[str]:
    """A string runs through /bin/sh -c (as in CI configs); a list runs as-is.

    A single line of plain words whose first word is a program on `path` is executed
    directly, as make does: the same meaning, one process and a few milliseconds less.
    `run_command` falls back to the shell for a script without `#!`, and reports a
    signal as the shell does (128 + its number).
    """
    if not isinstance(command, str):
        return list(command)
    words = command.split()
    if (
        _PLAIN_COMMAND.fullmatch(command)
        and words[0] not in _SHELL_WORDS
        and "=" not in words[0]  # an assignment
        and "/" not in words[0]  # a path: relative to the command's cwd, not ours
        and path is not None
        and all(os.path.isabs(entry) for entry in path.split(os.pathsep))  # no cwd lookups
        and (program := shutil.which(words[0], path=path))
    ):
        return [program, *words[1:]]
    return shell_argv(command)


def shell_argv(command: str) -> list[str]:
    return ["/bin/sh", "-c", command]


def run_command(
    command: str | Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float,
    log_path: Path,
    kill_grace: float = KILL_GRACE_SECONDS,
    rss: RssSampler | None = None,
    max_file_bytes: int | None = None,
    stop: RunStop | None = None,
) -> CommandOutcome:
    """Run `command` in `cwd`, appending its stdout and stderr to `log_path`.

    With an `rss` sampler, the peak RSS of the command's whole process tree is measured.
    `max_file_bytes` caps the size of any file the command writes, its log included
    (RLIMIT_FSIZE, inherited by what it starts): past it, the write fails and the writer
    gets SIGXFSZ, instead of a runaway output filling the disk until the timeout.
    With a `stop`, the command is not started once its run is stopped, and is killed
    when the run is stopped while it runs. An exception that interrupts the wait (a
    signal handler's, in the main thread) kills the group too before it propagates.
    """
    if stop is not None and stop.reason is not None:
        now = _now()
        return CommandOutcome(exit_code=None, timed_out=False, started_at=now, ended_at=now,
                              peak_rss_mb=None, error=f"not started: {stop.reason}",
                              interrupted=True)  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    limit_files = None if max_file_bytes is None else _file_size_limiter(max_file_bytes)
    with log_path.open("ab") as log:
        started_at = _now()
        try:
            process, direct = _start(command, cwd, env, log, limit_files)
        except OSError as exc:
            message = f"cannot start command: {exc.strerror or exc}"
            log.write(f"{message}\n".encode())
            return CommandOutcome(None, False, started_at, _now(), None, message)
    watchdog: _Watchdog | None = None
    try:
        if rss is not None:
            rss.watch(process.pid)
        watchdog = _Watchdog(process.pid, timeout, kill_grace)
        if stop is not None:
            stop._track(watchdog)
        _wait_for_exit(process.pid)
    except BaseException:  # nothing it started may outlive the run that gives up on it
        if watchdog is not None:
            watchdog.child_exited()  # no signal from it after this: the group is ours to end
        end_process_group(process, kill_grace)
        raise
    finally:
        if watchdog is not None:
            watchdog.child_exited()
            if stop is not None:
                stop._untrack(watchdog)
        peak_rss_mb = rss.release(process.pid) if rss is not None else None
    ended_at = _now()
    exit_code = _reap(process, direct)
    interrupted = watchdog.interrupted  # even if it then exits 0: it was cut short
    if watchdog.fired or interrupted:
        why = f"timed out after {timeout:g}s" if watchdog.fired else f"stopped: {_reason(stop)}"
        with log_path.open("ab") as log:
            log.write(f"\n[{why}: process group killed]\n".encode())
    return CommandOutcome(
        exit_code=exit_code,
        timed_out=watchdog.fired,
        started_at=started_at,
        ended_at=ended_at,
        peak_rss_mb=peak_rss_mb,
        interrupted=interrupted,
    )


def _start(
    command: str | Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    log: BinaryIO,
    limit_files: Callable[[], None] | None,
) -> tuple[subprocess.Popen[bytes], bool]:
    """Start `command` in a session of its own, its output to `log`; and whether it runs
    `direct`ly, without the shell (a plain command line, see `to_argv`). A plain command
    that is a script without #! runs through the shell after all. OSError if it cannot."""
    argv = to_argv(command, env.get("PATH", os.defpath))
    direct = isinstance(command, str) and argv != shell_argv(command)

    def start(argv: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=limit_files,
        )  # fmt: skip

    try:
        return start(argv), direct
    except OSError as exc:
        if not (direct and exc.errno == errno.ENOEXEC):
            raise
        assert isinstance(command, str)
        return start(shell_argv(command)), False


def _reap(process: subprocess.Popen[bytes], direct: bool) -> int:
    """The exit code of a command that has exited (`_wait_for_exit`), as `sh -c` would
    report it; what is left of its group is killed first, while the exited leader still
    holds the group's id (unreaped, its pid cannot be reused: no other group is hit)."""
    _kill_group(process.pid, signal.SIGKILL)
    status = os.waitpid(process.pid, 0)[1]
    exit_code = os.waitstatus_to_exitcode(status)
    process.returncode = exit_code  # reaped here: tell Popen so it does not wait again
    if direct and exit_code < 0:
        return 128 - exit_code  # as `sh -c` reports a command killed by a signal
    return exit_code


def _wait_for_exit(pid: int) -> None:
    """Return the instant the child exits, leaving it to be reaped. The main thread waits
    in slices (on a pidfd), so that a signal's handler is not kept waiting until the
    command ends (see flows/interrupts.py); other threads block in waitid."""
    if threading.current_thread() is threading.main_thread():
        try:
            exited = os.pidfd_open(pid)
        except OSError:  # a kernel without pidfds (before Linux 5.3)
            pass
        else:
            try:
                while not select.select([exited], [], [], SIGNAL_CHECK_S)[0]:
                    pass
            finally:
                os.close(exited)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)


def end_process_group(process: subprocess.Popen[Any], grace: float = KILL_GRACE_SECONDS) -> None:
    """SIGTERM the group `process` leads (started with `start_new_session`), give it
    `grace` seconds to exit, then SIGKILL whatever is left of the group (sent even if
    another interrupt cuts the wait short), and reap it."""
    _kill_group(process.pid, signal.SIGTERM)
    try:
        deadline = time.monotonic() + grace
        while not _has_exited(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        _kill_group(process.pid, signal.SIGKILL)  # the exited leader, unreaped, holds its id
        process.wait()


def _has_exited(pid: int) -> bool:
    """Whether the child `pid` has exited, leaving it unreaped (its pid, and so its group's
    id, cannot be reused until it is)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None
    except ChildProcessError:  # reaped already
        return True


def _reason(stop: RunStop | None) -> str:
    return (stop.reason if stop is not None else None) or "interrupted"


def _file_size_limiter(limit: int) -> Callable[[], None]:
    """What the child runs between fork and exec to cap the size of the files it writes.

    It must happen before exec: set from the parent once the child runs, the limit can
    come after the child has already started what writes. Between fork and exec the child
    runs CPython's after-fork hooks (which reset the locks they own) and this C function
    with its arguments bound: no code of ours that could wait on a lock another thread
    held at the fork. It never asks for more than the hard limit this process has, which
    would fail.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    return functools.partial(resource.setrlimit, resource.RLIMIT_FSIZE, (limit, limit))


def read_tail(path: Path, max_bytes: int = TAIL_BYTES, max_lines: int = TAIL_LINES) -> str:
    """The last lines of a log file, decoded leniently."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line was probably cut in half
    return "\n".join(lines[-max_lines:])


class _Watchdog:
    """Kills the child's process group if it outlives its timeout, or when interrupted:
    SIGTERM, then SIGKILL if it still runs after the grace period. Kills it once."""

    def __init__(self, pid: int, timeout: float, grace: float) -> None:
        self._pid = pid
        self._grace = grace
        self._exited = threading.Event()
        self._lock = threading.Lock()
        self.fired = False  # timed out
        self.interrupted = False
        # A longer wait raises OverflowError in the timer thread: the timeout would be lost.
        self._timer = _daemon_timer(min(timeout, threading.TIMEOUT_MAX), self._expire)

    def _expire(self) -> None:
        if self._terminate(timed_out=True) and not self._exited.wait(self._grace):
            self._kill_if_running()

    def interrupt(self) -> None:
        """Kill the group now (without waiting here for the grace period)."""
        if self._terminate(timed_out=False):
            _daemon_timer(self._grace, self._kill_if_running)

    def _terminate(self, timed_out: bool) -> bool:
        """SIGTERM the group, unless it has exited or is being killed already."""
        with self._lock:
            if self._exited.is_set() or self.fired or self.interrupted:
                return False
            self.fired, self.interrupted = timed_out, not timed_out
            _kill_group(self._pid, signal.SIGTERM)
        return True

    def _kill_if_running(self) -> None:
        with self._lock:  # not once `child_exited` returned: the child may be reaped
            if not self._exited.is_set():
                _kill_group(self._pid, signal.SIGKILL)

    def kill_now(self) -> None:
        """SIGKILL the group at once (stopped again while its SIGTERM grace runs)."""
        self.interrupt()
        self._kill_if_running()

    def child_exited(self) -> None:
        """The watchdog's work is over: the child exited (not yet reaped), or the caller
        ends its group itself. No signal is sent to the group after this returns."""
        with self._lock:
            self._exited.set()
        self._timer.cancel()


def _daemon_timer(seconds: float, function: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, function)
    timer.daemon = True
    timer.start()
    return timer


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _now() -> datetime:
    return datetime.now(UTC)
