"""Issue processes: the fleet's workers run in a few child processes, not in the leader.

An issue's own work (claim, workspace, git, the agent loop, checks, pull request) is
Python, and libgit2 calls that hold the GIL while they write files. With every worker a
thread of the leader, fifty workers queue for one interpreter lock beside the leader's
Prefect bookkeeping, and each system call waits to get it back. Measured here without
Prefect: 400 simulated issues on 50 threads of one process took 21.6 s and 73 ms of CPU
each; on two processes of 25 threads, 11.3 s and 27 ms each (ideal 8 s).

`IssueProcesses` starts its children (`python -m flows.fleet.processes`: they import the
fleet's worker side only, not Prefect) when the first issues are known, sends each the
recipe of its clients (`ProcessSpec`, through its stdin: credentials never reach a
command line or the environment), then gives each issue to the child with the fewest
issues in flight. A child runs every issue on a thread of its own and sends back the
issue's heartbeats (relayed to the leader's observers) and its result.

Closing lets the children finish the issues they hold (as the leader's threads would),
then they exit. A child that dies fails only the issues it held; a leader that dies
takes its children with it (they see its pipe close), as it would its threads.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import flows
from flows.fleet.config import FleetConfig
from flows.fleet.connection import FleetCredentials, fleet_context, open_connection
from flows.fleet.models import IssueResult
from flows.fleet.worker import FleetContext, IssueUnit, resolve_issue
from flows.logs import project_log_level, show_project_logs

log = logging.getLogger(__name__)
Heartbeat = Callable[[str, str, float], None]  # worker, activity, cost of the issue so far
CLOSE_TIMEOUT_S = 30.0  # after the last issue, how long a child may take to exit
LEADER_GONE_EXIT = 70  # a child's exit code when its leader's pipe closed without a word


class IssueProcessError(RuntimeError):
    """An issue could not be resolved in its child process (what it raised, or its death)."""


@dataclass(frozen=True)
class ProcessSpec:
    """What a child needs to build the clients every issue of this run shares."""

    settings: FleetConfig
    credentials: FleetCredentials | None
    report_dir: Path
    claimant: str
    log_level: int = field(default_factory=project_log_level)  # LOG_LEVEL, as in the leader

    def context(self, heartbeat: Heartbeat) -> FleetContext:
        connection = open_connection(self.settings, self.credentials, seed=False)
        return fleet_context(connection, self.report_dir, self.claimant, heartbeat)


class IssueProcesses:
    """Child processes that resolve issues, none until `start`; a context manager."""

    def __init__(self, spec: ProcessSpec, heartbeat: Heartbeat) -> None:
        self._spec = spec
        self._heartbeat = heartbeat
        self._children: list[_Child] = []
        self._lock = threading.Lock()
        self._closed = False

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
        if not self._children:
            raise IssueProcessError("no issue process was started")
        live = [child for child in self._children if child.alive]
        if not live:
            reasons = "; ".join(sorted({child.death or "" for child in self._children}))
            raise IssueProcessError(f"every issue process has exited: {reasons}")
        return min(live, key=lambda child: child.load).resolve(unit, worker)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self._children]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            child.close()
        for child in children:
            child.join(CLOSE_TIMEOUT_S)


class _Child:
    """One child process and the thread that reads what it sends."""

    def __init__(self, spec: ProcessSpec, heartbeat: Heartbeat, index: int) -> None:
        package_root = str(Path(flows.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "flows.fleet.processes"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd(), env=env,
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
        self.death: str | None = None  # why it can take no more issues
        self._outbox.send(spec)
        # carries the leader's context (its observers) to the heartbeats it relays
        self._reader = threading.Thread(
            target=contextvars.copy_context().run, args=(self._read,),
            name=f"issue-process-{index}", daemon=True,
        )  # fmt: skip
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.death is None

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def load(self) -> int:
        return len(self._jobs)

    def resolve(self, unit: IssueUnit, worker: str) -> IssueResult:
        future: Future[IssueResult] = Future()
        with self._lock:
            if self.death is not None:
                raise IssueProcessError(self.death)
            job = next(self._ids)
            self._jobs[job] = future
            try:
                self._outbox.send((job, unit, worker))
            except OSError as exc:
                self._jobs.pop(job, None)
                raise IssueProcessError(f"issue process {self._process.pid}: {exc}") from None
        return future.result()

    def close(self) -> None:
        """No more issues: the child finishes those it holds, then exits."""
        with self._lock:
            self.death = self.death or "closed"
            with suppress(OSError):
                self._outbox.send(None)
            self._outbox.close()

    def join(self, timeout: float) -> None:
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout)

    def _read(self) -> None:
        problem = None
        try:
            while True:
                self._handle(*self._inbox.recv())
        except (EOFError, OSError):
            pass
        except Exception as exc:  # a message it cannot make sense of: this child is done
            problem = f"issue process {self.pid} sent what the leader cannot read: {exc!r}"
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
        elif kind == "broken":
            self._fail_all(f"issue process could not start: {rest[0]}")

    def _fail_all(self, reason: str) -> None:
        with self._lock:
            if self.death is None or self.death == "closed":
                self.death = reason
            jobs, self._jobs = self._jobs, {}
        for future in jobs.values():
            future.set_exception(IssueProcessError(reason))


# --- the child ------------------------------------------------------------------------


def serve() -> None:
    """A child: read the spec, then issues until the leader says it is done (None)."""
    inbox = Pipe(os.dup(0), writable=False)
    outbox = Pipe(os.dup(1), readable=False)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)  # a stray print must not corrupt the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the leader decides when to stop
    send_lock = threading.Lock()

    def send(*message: Any) -> None:
        with send_lock, suppress(OSError):  # the leader is gone: nobody to tell
            outbox.send(message)

    spec: ProcessSpec = inbox.recv()
    if spec.log_level:
        show_project_logs(spec.log_level)
    try:
        ctx = spec.context(heartbeat=lambda *beat: send("beat", *beat))
    except Exception as exc:
        send("broken", f"{type(exc).__name__}: {exc}")
        return

    def run(job: int, unit: IssueUnit, worker: str) -> None:
        try:
            result = resolve_issue(unit, worker, ctx)
        except BaseException as exc:
            send("error", job, f"{type(exc).__name__}: {exc}")
        else:
            send("done", job, result)

    with ThreadPoolExecutor(spec.settings.workers, thread_name_prefix="issue") as threads:
        while True:
            try:
                message = inbox.recv()
            except EOFError:  # the leader died: so do its workers, as its threads would
                os._exit(LEADER_GONE_EXIT)
            if message is None:  # closed: finish the issues in flight
                break
            threads.submit(run, *message)


if __name__ == "__main__":
    serve()
