"""Everything that knows Prefect's defaults lives here: how a work unit becomes a named
task run, run settings, artifacts (published off the critical path), UI links, and a
local Prefect server for runs that have no API configured.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from prefect import State, Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TERMINAL_STATES
from prefect.context import SyncClientContext
from prefect.futures import PrefectConcurrentFuture
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_UI_URL,
    temporary_settings,
)
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.commands import end_process_group
from flows.config import ConfigError
from flows.logs import quiet_loggers
from flows.report import RunFailed, UnitResult
from flows.secrecy import without_secrets

R = TypeVar("R", bound=UnitResult)
T = TypeVar("T")
log = logging.getLogger(__name__)


# --- run settings ---------------------------------------------------------------------


@dataclass
class LeaderSession:
    """One process's run of one or more leader calls (the CLI, a benchmark, tests)."""

    client: SyncPrefectClient
    publishers: list[ArtifactPublisher] = field(default_factory=list)

    def send_deferred(self) -> None:
        """Let the artifacts held back at the end of the runs so far go now, in the
        background (between the polls of a long monitor, not only when the session ends)."""
        self.publishers = [p for p in self.publishers if not p.done]
        for publisher in self.publishers:
            publisher.resume()


_session: contextvars.ContextVar[LeaderSession | None] = contextvars.ContextVar(
    "leader_session", default=None
)


@contextlib.contextmanager
def leader_session() -> Iterator[LeaderSession]:
    """Settings and shared resources for in-process leader runs.

    - No flow heartbeat: each flow run would end by joining a heartbeat thread that
      sleeps in whole seconds (up to 1 s per run); heartbeats only serve crash detection
      of deployment runs, which keep Prefect's default.
    - One API client for every flow run (Prefect otherwise builds one per run, TLS
      context included).
    - Artifacts are flushed when the session ends instead of at the end of every run.
    """
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        SyncClientContext.get_or_create() as client_context,
    ):
        session = LeaderSession(client_context.client)
        token = _session.set(session)
        try:
            yield session
        finally:
            _session.reset(token)
            for publisher in session.publishers:
                publisher.close()


def open_publisher(flow_run_id: UUID | None) -> ArtifactPublisher:
    session = _session.get()
    return ArtifactPublisher(flow_run_id, session.client if session else None)


def send_deferred_artifacts() -> None:
    """Between leader runs of a session: what the runs so far held back goes now."""
    session = _session.get()
    if session is not None:
        session.send_deferred()


def release_publisher(publisher: ArtifactPublisher) -> None:
    """Flush now, or, in a session, once the flow run has ended (off its wall time): when
    `send_deferred_artifacts` is called or the session ends."""
    session = _session.get()
    if session is None:
        publisher.close()
    else:
        publisher.defer()
        session.publishers.append(publisher)


@contextlib.contextmanager
def quiet_run_logs(enabled: bool = True) -> Iterator[None]:
    """Keep Prefect's per-run log lines off the terminal; they still reach the API and UI
    (the CLI's status board already shows every unit)."""
    if not enabled:
        yield
        return
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    run_logs = _DropRunLogs()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    for handler in handlers:
        handler.addFilter(run_logs)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(run_logs)


class _DropRunLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(("prefect.flow_runs", "prefect.task_runs"))


# --- work units as task runs ------------------------------------------------------------


def _unit_state(result: UnitResult) -> State[Any]:
    message = f"{result.name}: {result.status}"
    if result.failed:
        return Failed(message=message, data=result)
    if result.status == "skipped":  # ran, but could not do its job here (e.g. offline)
        return Completed(name="Skipped", message=message, data=result)
    return Completed(message=message, data=result)


@dataclass
class UnitTask:
    """A plain `work(unit, worker) -> UnitResult` with a Prefect task run named after its
    unit beside it; use it as a context manager (it owns the threads of both).

    The work goes first: `submit` starts it at once on a thread of its own, and one
    recorder thread then starts the unit's task run, which waits for the work and ends
    with its result. Prefect's bookkeeping (about 3 ms of CPU to submit a task run, more
    to run its engine) is thus off the units' path: a unit's start waits for no task-run
    submission, and a finished unit hands its slot on before its task run is recorded as
    ended (they still share the GIL). The task run's times in Prefect are a little later
    than the work's; the report has the real ones. The report follows the work: a task
    run that crashes, or cannot be submitted, changes nothing of its unit (it is logged).

    The task run ends Failed when the unit failed (so the UI shows it red) but still
    carries the result; retries and timeouts are the work function's own business, so
    attempts are counted exactly and Prefect never retries on top. The task takes the
    unit's label and index rather than the unit itself: Prefect walks every parameter
    of every task run, which costs measurable CPU at a thousand units.
    """

    work: Callable[[Any, str], UnitResult]
    units: Sequence[Any]
    name: str
    max_parallel: int
    task_run_threads: int | None = None  # default: two per slot (one for a run still ending)
    _outcomes: dict[int, Future[UnitResult]] = field(default_factory=dict)  # of the work
    # Units are started from the threads of units that just finished; they must start in
    # the leader's context, or Prefect would make each task run the child of the last.
    _leader_context: contextvars.Context = field(default_factory=contextvars.copy_context)
    _exit_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def __post_init__(self) -> None:
        def run_unit(label: str, index: int, worker: str) -> State[Any]:
            return _unit_state(self._outcomes[index].result())  # raises what the work raised

        run_unit.__name__ = run_unit.__qualname__ = self.name
        self.task: Task[..., Any] = task(
            name=self.name,
            task_run_name="{label}",
            cache_policy=NO_CACHE,
            persist_result=False,
            retries=0,
        )(run_unit)

    def __enter__(self) -> UnitTask:
        """Start the threads: exits in reverse, so the work ends, then the recorder, then
        the task runs."""
        stack = self._exit_stack
        threads = self.task_run_threads or 2 * self.max_parallel
        self._runner: ThreadPoolTaskRunner[Any] = stack.enter_context(
            ThreadPoolTaskRunner(max_workers=threads)
        )
        self._recorder = stack.enter_context(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="task-runs")
        )
        # two per slot: a unit that reports its result starts the next one before its own
        # thread is free
        self._unit_threads = stack.enter_context(
            ThreadPoolExecutor(max_workers=2 * self.max_parallel, thread_name_prefix="unit")
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._exit_stack.close()

    def submit(self, index: int, worker: str, reporter: Callable[[Any], None]) -> Future[Any]:
        """Start unit `index` on `worker`. `reporter` gets its result as soon as the work
        function returns; the future resolves with that result (or what the work raised)
        once the task run has ended too. A task run that crashes is only logged: the
        report follows the work."""
        unit = self.units[index]
        outcome: Future[UnitResult] = Future()

        def run_work() -> None:
            try:
                result = self.work(unit, worker)
            except BaseException as exc:  # the scheduler reports it when the future fails
                outcome.set_exception(exc)
                return
            try:
                reporter(result)  # may start the next units, from this thread
            finally:
                outcome.set_result(result)  # after the report: `ended` never comes first

        ended: Future[Any] = Future()
        parameters = {"label": unit_label(unit), "index": index, "worker": worker}
        self._outcomes[index] = outcome
        self._recorder.submit(
            self._leader_context.copy().run, self._start_task_run, parameters, outcome, ended
        )
        try:  # last: nothing after it may fail and free the slot of a running unit
            self._unit_threads.submit(self._leader_context.copy().run, run_work)
        except BaseException as exc:
            outcome.set_exception(exc)  # its task run ends at once, with this
            raise
        return ended

    def _start_task_run(
        self, parameters: dict[str, Any], outcome: Future[UnitResult], ended: Future[Any]
    ) -> None:
        """Submit the unit's task run; `ended` resolves when both it and the work have."""
        label = parameters["label"]

        def finish(task_run_problem: str | None) -> None:
            self._outcomes.pop(parameters["index"], None)
            if task_run_problem is not None:
                log.warning("the task run of %s crashed: %s", label, task_run_problem)
            _copy_outcome(outcome, ended)

        try:
            prefect_future = self._runner.submit(self.task, parameters)
            assert isinstance(prefect_future, PrefectConcurrentFuture)
            prefect_future.wrapped_future.add_done_callback(
                lambda done: outcome.add_done_callback(lambda _: finish(_crash_of(done)))
            )
        except BaseException as exc:  # the unit still runs and reports, without a task run
            log.warning("no task run for %s: %r", label, exc)
            outcome.add_done_callback(lambda _: finish(None))


def _crash_of(task_run: Future[Any]) -> str | None:
    """Why a task run crashed (its engine broke), if it did; a Failed unit is no crash."""
    error = task_run.exception()
    if error is not None:
        return repr(error)
    state = task_run.result()
    if isinstance(state, State) and state.is_crashed():
        return state.message or state.name
    return None


def _copy_outcome(source: Future[Any], target: Future[Any]) -> None:
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def unit_label(unit: Any) -> str:
    return f"p{unit.priority} {unit.name}"


def state_result(state: State[Any]) -> Any:
    """What a run returned: a failed leader run's report too (see RunFailed)."""
    value = state.result(raise_on_failure=False)
    if isinstance(value, RunFailed):
        return value.report
    if isinstance(value, BaseException):
        raise value
    return value


# --- artifacts --------------------------------------------------------------------------


PROGRESS_SETTLE_S = 0.03
# At most one progress update a second: each costs the leader and the server about 10 ms of
# CPU, which a run of many short units would otherwise spend many times a second.
PROGRESS_INTERVAL_S = 1.0
# A busy server answers some writes with a transient error (SQLite locked, a 5xx, a read
# timeout): an artifact call is tried again after these pauses before it is given up.
ARTIFACT_RETRY_DELAYS_S = (0.5, 2.0)
# How long the end of a run waits for queued artifact calls (the report among them).
ARTIFACT_FLUSH_TIMEOUT_S = 120.0


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    key = "-".join(parts).lower()
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", key)).strip("-")


class ArtifactPublisher:
    """Creates and updates artifacts of one flow run from a background thread.

    API calls never sit on a worker's critical path: callers enqueue and return at once.
    Progress updates are coalesced (only the newest value is sent), at most one a second
    (`PROGRESS_INTERVAL_S`; the last one goes at once when the run ends), and wait a
    moment before they go, so that units finishing together share one request, sent after
    the next units have started. A failed call is tried again (`ARTIFACT_RETRY_DELAYS_S`),
    then logged and dropped; artifacts must never fail the run.
    """

    def __init__(self, flow_run_id: UUID | None, client: SyncPrefectClient | None = None):
        self.flow_run_id = flow_run_id
        self._client = client
        self._jobs: queue.SimpleQueue[Callable[[SyncPrefectClient], None] | None] = (
            queue.SimpleQueue()
        )
        self._progress_lock = threading.Lock()
        self._progress: tuple[float, str] | None = None
        self._progress_artifact: tuple[UUID, str] | None = None  # its id and key, once created
        self._finished = False
        self._progress_sent_at = -PROGRESS_INTERVAL_S  # time.monotonic() of the last update
        self._ending = threading.Event()  # set when the run ends: no more waiting to send
        self._sending = threading.Event()  # cleared while calls are held back (`defer`)
        self._sending.set()
        # Prefect settings (the API URL) live in context variables: carry them over.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._serve,), name="artifacts", daemon=True
        )
        self._thread.start()

    def table(self, key: str, rows: list[dict[str, Any]], description: str) -> None:
        self._create(key, "table", rows, description)

    def markdown(self, key: str, markdown: str, description: str) -> None:
        self._create(key, "markdown", markdown, description)

    def start_progress(self, key: str, description: str) -> None:
        def create(client: SyncPrefectClient) -> None:
            artifact = self._call(key, lambda: client.create_artifact(
                ArtifactCreate(key=key, type="progress", data=0.0, description=description,
                               flow_run_id=self.flow_run_id)
            ))  # fmt: skip
            if artifact is not None:
                self._progress_artifact = (artifact.id, key)

        self._jobs.put(create)

    def progress(self, percent: float, description: str) -> None:
        with self._progress_lock:
            pending = self._progress is not None
            self._progress = (round(percent, 1), description)
        if not pending:
            self._jobs.put(self._send_progress)

    def finish(self) -> None:
        """Stop accepting work; what is queued is still sent."""
        if not self._finished:
            self._finished = True
            self._ending.set()
            self._jobs.put(None)

    def defer(self) -> None:
        """Stop accepting work and hold what is queued until `close`: sent while the flow
        run ends, these calls would slow down its last API calls."""
        self._sending.clear()
        self.finish()

    def resume(self) -> None:
        """Send what `defer` held back, in the background."""
        self._sending.set()

    @property
    def done(self) -> bool:
        """Finished, and everything queued was sent (or given up)."""
        return not self._thread.is_alive()

    def close(self, timeout: float = ARTIFACT_FLUSH_TIMEOUT_S) -> None:
        """Send everything queued, then stop."""
        self.finish()
        self.resume()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "artifacts of flow run %s were not all published: the Prefect API did not "
                "answer within %g s", self.flow_run_id, timeout,
            )  # fmt: skip

    def _send_progress(self, client: SyncPrefectClient) -> None:
        next_allowed = self._progress_sent_at + PROGRESS_INTERVAL_S - time.monotonic()
        self._ending.wait(max(PROGRESS_SETTLE_S, next_allowed))
        self._sending.wait()
        with self._progress_lock:
            latest, self._progress = self._progress, None
        if latest is None or self._progress_artifact is None:
            return
        percent, description = latest
        progress_id, key = self._progress_artifact
        self._progress_sent_at = time.monotonic()
        self._call(key, lambda: client.update_artifact(
            progress_id, ArtifactUpdate(data=percent, description=description)
        ))  # fmt: skip

    def _create(self, key: str, kind: str, data: Any, description: str) -> None:
        payload = data if kind != "table" else _json_table(data)

        def create(client: SyncPrefectClient) -> None:
            self._call(key, lambda: client.create_artifact(
                ArtifactCreate(key=key, type=kind, data=payload, description=description,
                               flow_run_id=self.flow_run_id)
            ))  # fmt: skip

        self._jobs.put(create)

    def _serve(self) -> None:
        with contextlib.ExitStack() as stack:
            client = self._client or stack.enter_context(get_client(sync_client=True))
            while (job := self._jobs.get()) is not None:
                self._sending.wait()
                job(client)

    def _call(self, key: str, call: Callable[[], T]) -> T | None:
        """One API call, tried again after a failure; None when it never succeeded."""
        for pause in (*ARTIFACT_RETRY_DELAYS_S, None):
            try:
                return call()
            except Exception as exc:
                if pause is None:
                    log.warning(
                        "could not publish artifact %s of flow run %s: %s: %s",
                        key, self.flow_run_id, type(exc).__name__, exc,
                    )  # fmt: skip
                    return None
                time.sleep(pause)
        return None


def _json_table(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, default=str)


# --- the server -------------------------------------------------------------------------


# Where `prefect server start` serves its UI by default.
DEFAULT_UI_URL = "http://127.0.0.1:4200"
# The UI of the server `local_server` runs, while it does: its links end with it.
_temporary_ui: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "temporary_ui", default=None
)


def flow_run_url(flow_run_id: UUID | str | None, *, lasting: bool = False) -> str | None:
    """The flow run's page in the Prefect UI. `lasting`: a link meant to be opened after
    this process ended (a notification's): for a run on the temporary local server, the
    page of `prefect server start`, which serves the same database."""
    ui = PREFECT_UI_URL.value()
    if not ui or not flow_run_id:
        return None
    if lasting and on_temporary_server():
        ui = DEFAULT_UI_URL
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def on_temporary_server() -> bool:
    """Whether runs go to the server `local_server` started (it stops with this process)."""
    ui = _temporary_ui.get()
    return ui is not None and ui == PREFECT_UI_URL.value()


def api_configured() -> bool:
    return bool(PREFECT_API_URL.value())


def check_api_reachable(temporary_server_will_do: bool = True) -> None:
    """ConfigError when the configured PREFECT_API_URL does not answer its health check (asked
    through Prefect's own client, so its TLS and API-key settings apply).
    `temporary_server_will_do`: the command can run without PREFECT_API_URL (the hint says so)."""
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        instead = (", or unset PREFECT_API_URL to run with a temporary local server"
                   if temporary_server_will_do else "")  # fmt: skip
        raise ConfigError(
            "environment", "PREFECT_API_URL", f"no Prefect server answers at "
            f"{api_url_for_messages()} ({problem.__class__.__name__}): start one with "
            f"`prefect server start`{instead}",
        )  # fmt: skip


def api_url_for_messages() -> str:
    """The configured API URL without any user:password part."""
    url = str(PREFECT_API_URL.value() or "")
    if not url:
        return "(not set: Prefect's temporary local server)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()


def require_api(purpose: str) -> None:
    """A running Prefect server is needed (schedules, work pools, deployments)."""
    if not api_configured():
        raise ConfigError(
            "environment", "PREFECT_API_URL", f"not set: {purpose} needs a running Prefect "
            "server (`prefect server start`, then `prefect config set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api`)",
        )  # fmt: skip
    check_api_reachable(temporary_server_will_do=False)


@contextlib.contextmanager
def local_server(
    home: Path | None = None, startup_timeout: float = 120.0, database_url: str | None = None
) -> Iterator[str]:
    """Start `prefect server start` (UI included) on a free loopback port for this process.

    Used when no PREFECT_API_URL is configured. Unlike Prefect's ephemeral server, it is
    stopped only after everything this process sent has been recorded (see
    `wait_until_recorded`), so no task run or artifact is lost at exit. History lives in
    PREFECT_HOME's database (or `database_url`, e.g. postgresql+asyncpg://...), so
    `prefect server start` shows it later.
    """
    port = _free_port()
    # not the fleet's tokens: any process of this user (an agent's command) reads its environ
    env = {**without_secrets(os.environ, keep_prefix="PREFECT_"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": ""}  # fmt: skip
    if home is not None:
        env["PREFECT_HOME"] = str(home)
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url
    # the UI is told where its API is; without this it calls the default port 4200
    env["PREFECT_SERVER_UI_API_URL"] = f"http://127.0.0.1:{port}/api"
    log_file = Path(env.get("PREFECT_HOME", Path.home() / ".prefect")) / "server.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as server_log:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=server_log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_api(f"{url}/api", startup_timeout, process)
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api", PREFECT_UI_URL: url}):
            temporary = _temporary_ui.set(url)
            try:
                yield url
            finally:
                _temporary_ui.reset(temporary)
                drain_prefect_workers()  # before the server goes away
    finally:
        # the server and its children (the API runs in a uvicorn subprocess)
        end_process_group(process, grace=20)


def wait_for_api(
    api_url: str, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.25)
    raise RuntimeError(f"the Prefect server at {api_url} did not answer within {timeout:.0f}s")


def wait_until_recorded(flow_run_id: UUID, expected_task_runs: int, timeout: float = 30) -> bool:
    """Flush this process's events and logs, then wait until the server has recorded every
    task run of the flow run. True when all were recorded in time."""
    drain_prefect_workers(timeout)
    deadline = time.monotonic() + timeout
    body = {
        "flow_runs": FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])).model_dump(
            mode="json", exclude_unset=True
        ),
        "task_runs": {"state": {"type": {"any_": [t.value for t in TERMINAL_STATES]}}},
    }
    with get_client(sync_client=True) as client:
        while True:
            recorded = client.request("POST", "/task_runs/count", json=body).json()
            if recorded >= expected_task_runs:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def drain_prefect_workers(timeout: float = 30) -> None:
    """Send the events and logs this process still holds.

    Prefect's services warn "Still processing items" whenever one is stopped with items
    queued, which is the normal case here: we wait for those items, so the warning is
    silenced while we do (errors still show)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    with quiet_loggers(EventsWorker.__name__, APILogWorker.__name__):
        EventsWorker.drain_all(timeout=timeout)
        APILogWorker.drain_all(timeout=timeout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
