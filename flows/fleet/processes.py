"""Issue processes: the fleet's workers run in a few child processes, not in the leader.

An issue's own work (claim, workspace, git, the agent loop, checks, pull request) is
Python, and libgit2 calls that hold the GIL while they write files. With every worker a
thread of the leader, fifty workers queue for one interpreter lock beside the leader's
Prefect bookkeeping. Measured side by side (benchmarks/bench_fleet.py), 1000 simulated
issues on 50 workers: 48.3 s with threads of the leader, 37.8 s with two issue processes
(61.2 s against 33.7 s in another run: this machine's speed varies, the order does not).

`IssueProcesses` starts its children (`serve()` in a fresh interpreter that imports the
fleet's worker side only, not Prefect) when the first issues are known, sends each the
recipe of its clients (`ProcessSpec`, through its stdin: credentials never reach a
command line or the environment), then gives each issue to the child with the fewest
issues in flight. A child runs every issue on a thread of its own and sends back the
issue's heartbeats (relayed to the leader's observers) and its result.

Closing tells the children to take no more issues; they finish those they hold (as the
leader's threads would), then exit. `stop` stops their issues as the leader's own (an
interrupted run): agents cut short, commands killed. A child that dies fails
only the issues it held; a leader that dies takes its children with it (they see its pipe
close), as it would its threads.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, NoReturn

import psutil

import flows
from flows.commands import RunStop
from flows.fleet.config import FleetConfig
from flows.fleet.connection import FleetCredentials, fleet_context, open_connection
from flows.fleet.models import IssueResult
from flows.fleet.worker import FleetContext, IssueUnit, resolve_issue
from flows.leftovers import end_leftovers, new_marker
from flows.logs import show_project_logs
from flows.secrecy import make_undumpable, without_secrets

log = logging.getLogger(__name__)
Heartbeat = Callable[[str, str, float], None]  # worker, activity, cost of the issue so far
CLOSE_TIMEOUT_S = 30.0  # after the last issue, how long a child may take to exit
LEADER_GONE_EXIT = 70  # a child's exit code when its leader's pipe closed without a word
CLOSED = "closed"  # a child's refusal once the leader closed it; a failure after it wins
STOP = "stop"  # (STOP, reason): the run was stopped; otherwise (job, unit, worker) or None


class IssueProcessError(RuntimeError):
    """An issue could not be resolved in its child process (what it raised, or its death)."""


class NoIssueProcessError(IssueProcessError):
    """No child takes issues (none started, or every one exited): the issue was not sent."""


@dataclass(frozen=True)
class ProcessSpec:
    """What a child needs to build the clients every issue of this run shares."""

    settings: FleetConfig
    credentials: FleetCredentials | None
    report_dir: Path
    claimant: str
    log_level: int  # the leader's LOG_LEVEL (logging.NOTSET: none)
    # the run's (flows/leftovers.py): the leader ends what the children's commands left
    # running, even those of a child that died
    marker: str = field(default_factory=new_marker)

    def context(self, heartbeat: Heartbeat) -> FleetContext:
        connection = open_connection(self.settings, self.credentials, seed=False)
        return fleet_context(connection, self.report_dir, self.claimant, heartbeat, self.marker)


class IssueProcesses:
    """Child processes that resolve issues, none until `start`; a context manager."""

    def __init__(self, spec: ProcessSpec, heartbeat: Heartbeat) -> None:
        self._spec = spec
        self._heartbeat = heartbeat
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def marker(self) -> str:
        """The run's marker, which the children's commands carry (flows/leftovers.py)."""
        return self._spec.marker

    def __enter__(self) -> IssueProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def start(self, count: int) -> None:
        """Start `count` children (their imports then overlap the leader's setup step)."""
        if count < 1:
            raise ValueError(f"issue processes: count must be positive, got {count}")
        with self._lock:
            if self._closed:
                raise IssueProcessError("the issue processes are closed")
            while len(self._children) < count:
                self._children.append(_Child(self._spec, self._heartbeat, len(self._children)))

    def resolve(self, unit: IssueUnit, worker: str) -> IssueResult:
        """Resolve `unit` as `worker` in the least busy child; blocks until it is done."""
        with self._lock:  # one pick at a time: a burst of issues spreads over the children
            if not self._children:
                raise NoIssueProcessError("no issue process was started")
            accepting = [child for child in self._children if child.accepting]
            if not accepting:
                reasons = "; ".join(sorted({child.refusal or "" for child in self._children}))
                raise NoIssueProcessError(f"no issue process takes issues: {reasons}")
            future = min(accepting, key=lambda child: child.load).submit(unit, worker)
        return future.result()

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    @property
    def accepting(self) -> int:
        """How many children take issues."""
        return sum(child.accepting for child in self._children)

    def stop(self, reason: str) -> None:
        """Stop the issues in flight (see FleetContext.stop), in every child (once closed,
        a child reads nothing more but the end of its pipe)."""
        with self._lock:
            children = [] if self._closed else list(self._children)
        for child in children:
            child.stop(reason)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            child.close()
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        for child in children:
            child.join(deadline)


class _Child:
    """One child process and the thread that reads what it sends."""

    def __init__(self, spec: ProcessSpec, heartbeat: Heartbeat, index: int) -> None:
        self._process = subprocess.Popen(
            # -P: not the working directory's own `flows/`, if it has one
            [sys.executable, "-P", "-c", "from flows.fleet.processes import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd(), env=_child_env(),
        )  # fmt: skip
        assert self._process.stdin is not None and self._process.stdout is not None
        self._outbox = Pipe(os.dup(self._process.stdin.fileno()), readable=False)
        self._inbox = Pipe(os.dup(self._process.stdout.fileno()), writable=False)
        self._process.stdin.close()
        self._process.stdout.close()
        self._heartbeat = heartbeat
        self._jobs: dict[int, Future[IssueResult]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self.refusal: str | None = None  # why it takes no more issues
        try:
            self._outbox.send(spec)
        except OSError as exc:  # it died at once: its reader says how
            self.refusal = f"issue process {self.pid} could not start: {exc}"
        # carries the leader's context (its observers) to the heartbeats it relays
        self._reader = threading.Thread(
            target=contextvars.copy_context().run, args=(self._read,),
            name=f"issue-process-{index}", daemon=True,
        )  # fmt: skip
        self._reader.start()

    @property
    def accepting(self) -> bool:
        return self.refusal is None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def load(self) -> int:
        return len(self._jobs)

    def submit(self, unit: IssueUnit, worker: str) -> Future[IssueResult]:
        future: Future[IssueResult] = Future()
        with self._lock:
            if self.refusal is not None:
                raise IssueProcessError(self.refusal)
            job = next(self._ids)
            self._jobs[job] = future
            try:
                self._outbox.send((job, unit, worker))
            except BaseException as exc:
                self._jobs.pop(job, None)
                raise IssueProcessError(f"issue process {self.pid}: {exc!r}") from None
        return future

    def stop(self, reason: str) -> None:
        with self._lock, suppress(OSError):  # a child that is gone has nothing to stop
            self._outbox.send((STOP, reason))

    def close(self) -> None:
        """No more issues: the child finishes those it holds, then exits. The pipe stays
        open until then: its end would tell the child that the leader died."""
        with self._lock:
            self.refusal = self.refusal or CLOSED
            with suppress(OSError):
                self._outbox.send(None)

    def join(self, deadline: float) -> None:
        """Wait for the child to exit (killed at `deadline`, a monotonic time)."""
        try:
            self._process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._outbox.close()
        self._reader.join(max(0.0, deadline - time.monotonic()))

    def _read(self) -> None:
        problem = None
        try:
            while True:
                self._handle(*self._inbox.recv())
        except EOFError:  # it exited
            pass
        except Exception as exc:  # a broken pipe, or a message the leader cannot read
            problem = f"issue process {self.pid} failed: {exc!r}"
            self._process.kill()
        code = self._process.wait()
        self._fail_all(problem or f"issue process {self.pid} exited with code {code}")
        self._inbox.close()

    def _handle(self, kind: str, *rest: Any) -> None:
        if kind == "beat":
            try:
                self._heartbeat(*rest)
            except Exception:  # a broken status display fails no issue
                log.exception("a heartbeat observer failed")
        elif kind == "done":
            job, result = rest
            self._jobs.pop(job).set_result(result)
        elif kind == "error":
            job, message = rest
            self._jobs.pop(job).set_exception(IssueProcessError(message))
        elif kind == "broken":  # it took none of its issues: they may run elsewhere
            self._fail_all(f"issue process could not start: {rest[0]}", NoIssueProcessError)

    def _fail_all(self, reason: str, error: type[IssueProcessError] = IssueProcessError) -> None:
        with self._lock:
            if self.refusal in (None, CLOSED):
                self.refusal = reason
            jobs, self._jobs = self._jobs, {}
        for future in jobs.values():
            future.set_exception(error(reason))


# --- the child ------------------------------------------------------------------------


def serve() -> None:
    """A child: read the spec, then issues until the leader says it is done (None)."""
    inbox = Pipe(os.dup(0), writable=False)
    outbox = Pipe(os.dup(1), readable=False)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # a stray print must not corrupt the pipe
    # Ctrl-C reaches the whole terminal group, and a service manager may SIGTERM the whole
    # control group: the leader decides when to stop (it sends STOP). A handler, not
    # SIG_IGN, so that the commands this process starts get the default back at exec.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda signum, frame: None)
    make_undumpable()  # before the credentials arrive: commands cannot read them in /proc
    spec: ProcessSpec = inbox.recv()
    send_lock = threading.Lock()
    stop = RunStop()
    leader_gone = functools.partial(_leader_gone, stop, spec.marker)

    def send(*message: Any) -> None:
        try:
            with send_lock:
                outbox.send(message)
        except OSError:
            leader_gone()

    if spec.log_level:
        show_project_logs(spec.log_level)
    try:
        ctx = spec.context(heartbeat=lambda *beat: send("beat", *beat))
    except Exception as exc:
        send("broken", f"{type(exc).__name__}: {exc}")
        return
    ctx = dataclasses.replace(ctx, stop=stop)

    def run(job: int, unit: IssueUnit, worker: str) -> None:
        try:
            result = resolve_issue(unit, worker, ctx)
            send("done", job, result)
        except BaseException as exc:  # raised by the work, or the result did not pickle
            log.exception("issue %s failed in issue process %d", unit.name, os.getpid())
            send("error", job, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(spec.settings.workers, thread_name_prefix="issue") as threads:
        while (message := _next_message(inbox, leader_gone)) is not None:
            if message[0] == STOP:
                stop.stop(message[1])
            else:
                threads.submit(run, *message)
        # closed: the issues in flight finish (leaving this block waits for them), unless
        # the leader dies meanwhile
        threading.Thread(target=_exit_with_leader, args=(inbox, leader_gone), daemon=True).start()


def _next_message(inbox: Pipe, leader_gone: Callable[[], NoReturn]) -> Any:
    try:
        return inbox.recv()
    except EOFError:  # the leader died without a word
        leader_gone()


def _exit_with_leader(inbox: Pipe, leader_gone: Callable[[], NoReturn]) -> None:
    """After the closing message (None) nothing more comes: a read returns only when the
    leader's end of the pipe closes, which it does after this process exited, or when it
    died."""
    with suppress(EOFError, OSError):
        inbox.recv()
    leader_gone()


def _leader_gone(stop: RunStop, marker: str) -> NoReturn:
    """The leader is gone: so are its workers, as its threads would be, and whatever they
    run, killed now: agents' commands, checks, git calls (each in a session of its own,
    they would outlive this process, and their timeouts with it), and what the run's
    commands left running (no leader will end it)."""
    stop.stop("the leader is gone", at_once=True)  # no new command starts
    try:
        for child in psutil.Process().children():  # unreaped, each holds its group's id
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
        end_leftovers(marker, grace=0)
    finally:
        os._exit(LEADER_GONE_EXIT)


def _child_env() -> dict[str, str]:
    """The leader's environment without its secrets (a child gets what it needs in the
    spec: every variable whose name says token, key, secret, password, ... is left out),
    and with this project's code on its path, installed or not."""
    env = without_secrets(os.environ)
    project = str(Path(flows.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [project, env.get("PYTHONPATH")]))
    return env
