"""The fleet's flows, on the same leader as the pipeline:

    fleet          one poll: ready issues -> parallel agent workers -> pull requests; in
                   distributed mode the workers are `resolve-issue` runs on a work pool
    issue-poller   the scheduled deployment: release lost issues, dispatch one
                   `resolve-issue` run per ready issue, return at once
    resolve-issue  one issue, one run (what a work pool's workers execute)

This module is the composition root: it resolves a mode's credentials (blocks or
environment), has connection.py build the clients, and injects them; nothing below reads
tokens (issue processes build their clients from the same recipe, sent to them)."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from prefect import State, flow, get_client
from prefect.artifacts import create_table_artifact
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import DeploymentResponse
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from flows._prefect import state_result
from flows.config import ConfigError
from flows.fleet.config import FleetConfig, load_fleet_config, uses_testbed
from flows.fleet.connection import Connection, fleet_context, open_connection
from flows.fleet.credentials import resolve_credentials
from flows.fleet.dispatch import (
    PRIORITY_QUEUES,
    RESOLVE_DEPLOYMENT,
    Dispatch,
    dispatch,
    priority_queue,
    sweep_lost_runs,
    wait_for_run,
)
from flows.fleet.merge import MergeResult, merge_approved
from flows.fleet.models import Issue, IssueResult
from flows.fleet.processes import (
    IssueProcessError,
    IssueProcesses,
    NoIssueProcessError,
    ProcessSpec,
)
from flows.fleet.tracker import TrackerError, requeue_interrupted_claims
from flows.fleet.worker import (
    CANCELLED,
    FleetContext,
    IssueUnit,
    crashed_issue,
    fail_abandoned_issue,
    resolve_issue,
    skipped_issue,
)
from flows.leader import LeaderPlan, heartbeat, lead, report_state
from flows.leftovers import ending_leftovers
from flows.logs import project_log_level
from flows.report import Report, SetupSummary
from flows.scheduler import build_tiers
from flows.secrecy import make_undumpable

log = logging.getLogger(__name__)
TIER_NAMES = dict(enumerate(PRIORITY_QUEUES, start=1))  # urgent, normal, low
AUTO_PROCESSES_FROM = (8, 100)  # workers, issues
CANCEL_CHECK_TIMEOUT_S = 3.0  # asking the API whether a stop is a cancellation


def run_settings(config_path: str | None, overrides: dict[str, Any]) -> FleetConfig:
    """A flow run's settings: its config file, then its `overrides` parameter."""
    path = Path(config_path) if config_path else None
    return load_fleet_config(path, overrides, from_command_line=False)


def connect(settings: FleetConfig) -> Connection:
    """Build the clients of a mode; ConfigError for missing or bad input, before any work.

    Outside the testbed the credentials come from the configured blocks (or environment),
    and the blocks' repository, labels and model settings win over `settings`. This process
    is made undumpable first: the agents' commands cannot read its tokens through /proc."""
    make_undumpable()
    credentials = None if uses_testbed(settings) else resolve_credentials(settings, os.environ)
    return open_connection(settings, credentials)


def fleet_plan(
    connection: Connection,
    report_dir: Path,
    issues: list[Issue] | None = None,
    worker: str | None = None,
    processes: IssueProcesses | None = None,
) -> LeaderPlan[IssueUnit, IssueResult]:
    """Resolve `issues` (default: the ready ones) with agent workers: threads of this
    process, or of issue processes (started here, when given and worth it: see
    `process_count`).

    `worker` names the one worker of a `resolve-issue` run instead of the slot names."""
    settings = connection.settings
    marker = processes.marker if processes is not None else None  # one for all of the run
    ctx = fleet_context(connection, report_dir, claimant(), heartbeat, marker)
    if issues is None and (requeued := requeue_if_enabled(connection)):
        print(f"put back in the queue (interrupted claims): {_numbers(requeued)}")
    found = connection.tracker.list_ready() if issues is None else issues
    units = [IssueUnit(issue, issue.priority(settings.labels.priority_prefix)) for issue in found]

    def in_this_process(unit: IssueUnit, slot: str) -> IssueResult:
        return resolve_issue(unit, worker or slot, ctx)

    work: Callable[[IssueUnit, str], IssueResult] = in_this_process
    if processes is not None and (children := process_count(settings, len(units))):
        processes.start(children)  # their start overlaps the setup step
        work = partial(_in_an_issue_process, processes, ctx, worker)

    def stop_units(reason: str) -> None:
        if ctx.stop.reason is None and flow_run_cancelled():  # a second stop asks no API
            reason = CANCELLED
        ctx.stop.stop(reason)
        if processes is not None:
            processes.stop(reason)

    def update_mirror() -> SetupSummary:
        started = time.perf_counter()
        existed = ctx.mirror.exists()
        ctx.mirror.ensure()
        return SetupSummary(cache_hit=existed, duration_s=round(time.perf_counter() - started, 3),
                            key=ctx.mirror.path.name, cache_dir=str(ctx.mirror.path))  # fmt: skip

    return LeaderPlan(
        kind="fleet",
        name=connection.name.replace("/", "-"),
        tiers=build_tiers(units, TIER_NAMES),
        work=work,
        skipped=skipped_issue,
        crashed=crashed_issue,
        max_parallel=1 if worker else settings.workers,
        report_dir=report_dir,
        setup=update_mirror if units else None,
        describe=_describe,
        tier_barriers=False,  # issues are independent: urgent first, but nobody waits
        notifications=settings.notifications,
        # each issue ends what its commands left running; the run, what is left of that
        # (an issue process may have died)
        scope=partial(ending_leftovers, ctx.marker),
        stop_units=stop_units,
    )


def distributed_plan(
    connection: Connection,
    report_dir: Path,
    run_parameters: dict[str, Any],
    deployment: str = RESOLVE_DEPLOYMENT,
) -> LeaderPlan[IssueUnit, IssueResult]:
    """Resolve the ready issues as `resolve-issue` runs on a work pool, and wait for them.

    Every issue is dispatched at once (idempotently: see dispatch.py); how many run at a
    time is the work pool's concurrency limit, across all its workers and machines."""
    with get_client(sync_client=True) as client:
        target = read_deployment(client, deployment)
        released, units = sweep_then_ready(client, target, connection)
    if released:
        print(f"released issues of lost runs or interrupted claims: {_numbers(released)}")

    stopped = threading.Event()  # the leader was interrupted: it stops waiting

    def run_on_pool(unit: IssueUnit, slot: str) -> IssueResult:
        with get_client(sync_client=True) as client:
            started = dispatch(client, target.id, connection.source, unit.issue,
                               run_parameters, queue_for(target, unit))  # fmt: skip
            run = wait_for_run(client, started.flow_run_id, stop=stopped)
        if run is None:
            return skipped_issue(unit, f"not waited for: run {started.flow_run_name} goes on "
                                       "on the work pool")  # fmt: skip
        return issue_result_of(run, unit)

    return LeaderPlan(
        kind="fleet",
        name=connection.name.replace("/", "-"),
        tiers=build_tiers(units, TIER_NAMES),
        work=run_on_pool,
        skipped=skipped_issue,
        crashed=crashed_issue,
        max_parallel=max(1, len(units)),
        report_dir=report_dir,
        describe=_describe,
        tier_barriers=False,
        # no notifications: each resolve-issue run sends its own
        stop_units=lambda reason: stopped.set(),
    )


def sweep_then_ready(
    client: SyncPrefectClient, target: DeploymentResponse, connection: Connection
) -> tuple[list[int], list[IssueUnit]]:
    """Release the issues of lost runs and interrupted claims; then the ready issues as
    units, urgent first."""
    released = sweep_lost_runs(client, target.id, connection.source, connection.tracker)
    released += requeue_if_enabled(connection)
    prefix = connection.settings.labels.priority_prefix
    units = [IssueUnit(i, i.priority(prefix)) for i in connection.tracker.list_ready()]
    return released, sorted(units, key=lambda unit: unit.priority)


def requeue_if_enabled(connection: Connection) -> list[int]:
    """Put interrupted claims back in the queue when the config asks for it (see
    `requeue_interrupted_claims`); the numbers of those issues."""
    if not connection.settings.requeue_interrupted_claims:
        return []
    return requeue_interrupted_claims(connection.tracker)


def queue_for(target: DeploymentResponse, unit: IssueUnit) -> str | None:
    """The pool's queue for the issue's priority; None for a served deployment (no pool)."""
    return priority_queue(unit.priority) if target.work_pool_name else None


def issue_result_of(run: FlowRun, unit: IssueUnit) -> IssueResult:
    """The issue's result from a finished `resolve-issue` run (its persisted report)."""
    state = run.state
    if state is not None and (state.is_completed() or state.is_failed()):
        try:
            report = state_result(state)
        except Exception as exc:  # a lost result fails only this issue
            return crashed_issue(unit, "?", RuntimeError(f"run {run.name}: no result ({exc})"))
        if isinstance(report, Report) and report.tasks:
            result = report.tasks[0]
            assert isinstance(result, IssueResult)
            return result
    what = state.name if state else "unknown"
    message = state.message if state and state.message else ""
    return crashed_issue(unit, "?", RuntimeError(f"run {run.name} ended {what} {message}".strip()))


def read_deployment(client: SyncPrefectClient, name: str) -> DeploymentResponse:
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise ConfigError(
            "Prefect server", "deployment", f"{name!r} not found: deploy it first "
            "(`prefect --no-prompt deploy --all`)",
        ) from None  # fmt: skip


def flow_run_cancelled() -> bool:
    """Whether the current flow run is being cancelled: Prefect marks it Cancelling before
    it signals the run's process. False when that cannot be told within moments (asked
    once, not retried: the agents and commands keep running until it is answered)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return False
    try:
        with (
            temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}),
            get_client(
                sync_client=True, httpx_settings={"timeout": CANCEL_CHECK_TIMEOUT_S}
            ) as client,
        ):
            state = client.read_flow_run(context.flow_run.id).state
    except Exception as exc:  # the API is down, say: taken for a plain interrupt
        log.warning("could not read the state of this flow run: %s", exc)
        return False
    return state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED)


def claimant() -> str:
    """Who claims: host:pid, and the flow run, so that a sweep can tell whose claim it is."""
    run = FlowRunContext.get()
    flow_run = f" flow-run {run.flow_run.id}" if run and run.flow_run else ""
    return f"{socket.gethostname()}:{os.getpid()}{flow_run}"


def worker_id() -> str:
    """This process's worker name: $WORKER_ID (set on each `prefect worker start`), or
    host-pid; safe as a folder name."""
    name = os.environ.get("WORKER_ID") or f"{socket.gethostname()}-{os.getpid()}"
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("_.-")  # starts with a letter or digit
    return safe[:64] or "worker"


def default_report_dir(settings: FleetConfig) -> Path:
    return Path(settings.workspace) / ".fleet" / "report"


def _describe(unit: IssueUnit) -> str:
    return f"#{unit.issue.number} {unit.issue.title}"


@flow(name="fleet", persist_result=False)
def fleet(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    report_dir: str | None = None,
) -> State[Any]:
    """One poll: claim the ready issues and resolve them with parallel agents (in distributed
    mode: with `resolve-issue` runs on the work pool)."""
    settings = run_settings(config_path, overrides or {})
    with connect(settings) as connection:
        merge_approved_pulls(connection)
        target = (Path(report_dir) if report_dir else default_report_dir(settings)).resolve()
        if settings.mode == "distributed":
            parameters = run_parameters(config_path, overrides or {})
            return report_state(lead(distributed_plan(connection, target, parameters)))
        spec = ProcessSpec(connection.settings, connection.credentials, target, claimant(),
                           project_log_level())  # fmt: skip
        with IssueProcesses(spec, heartbeat) as processes:
            return report_state(lead(fleet_plan(connection, target, processes=processes)))


def _in_an_issue_process(
    processes: IssueProcesses, ctx: FleetContext, worker: str | None, unit: IssueUnit, slot: str
) -> IssueResult:
    """The issue in an issue process; in this one when none takes issues any more (they
    could not start, e.g. a brief GitHub error, or died): the run goes on, slower. An
    issue whose process died while it held it is labelled failed, not left in progress."""
    try:
        return processes.resolve(unit, worker or slot)
    except NoIssueProcessError as exc:
        log.warning("%s runs in the leader: %s", unit.name, exc)
        return resolve_issue(unit, worker or slot, ctx)
    except IssueProcessError as exc:
        fail_abandoned_issue(ctx, unit.issue, worker or slot, str(exc))
        raise


def process_count(settings: FleetConfig, issues: int) -> int:
    """How many issue processes a run of `issues` issues starts: `processes` when set;
    by default one per CPU core once a run is big enough (AUTO_PROCESSES_FROM) for what
    they save to outweigh their start (about a second of CPU each, measured), else none."""
    if settings.processes is not None:
        return min(settings.processes, settings.workers, issues)
    workers, enough = AUTO_PROCESSES_FROM
    if settings.workers < workers or issues < enough:
        return 0
    return min(os.cpu_count() or 1, settings.workers)


def run_parameters(config_path: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a `resolve-issue` run is given (stored on the server, shown in the UI): the
    poller's settings, adding no mock issue, and no notification URLs (they may hold tokens:
    give them in the config file). Relative paths stay relative: runs work in the
    deployment's working directory."""
    run_overrides = {key: value for key, value in overrides.items() if key != "notifications"}
    return {"config_path": config_path, "overrides": {**run_overrides, "mock_issues": 0}}


@flow(name="issue-poller", persist_result=False)
def issue_poller(
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    deployment: str = RESOLVE_DEPLOYMENT,
) -> list[Dispatch]:
    """Release the issues of lost runs, then start one `resolve-issue` run per ready issue
    (urgent first) and return without waiting: the work pool runs them."""
    settings = run_settings(config_path, overrides or {})
    parameters = run_parameters(config_path, overrides or {})
    with connect(settings) as connection, get_client(sync_client=True) as client:
        merge_approved_pulls(connection)
        target = read_deployment(client, deployment)
        released, units = sweep_then_ready(client, target, connection)
        source = connection.source
        dispatched = [
            dispatch(client, target.id, source, unit.issue, parameters, queue_for(target, unit))
            for unit in units
        ]
    publish_dispatches(dispatched, released, connection.name)
    return dispatched


@flow(name="resolve-issue", persist_result=True)
def resolve_issue_run(
    issue_number: int,
    config_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    report_dir: str | None = None,
) -> State[Any]:
    """One issue from claim to pull request, on whichever worker runs this."""
    settings = run_settings(config_path, {**(overrides or {}), "mock_issues": 0})
    with connect(settings) as connection:
        issue = connection.tracker.get(issue_number)
        worker = worker_id()
        target = Path(report_dir) if report_dir else default_report_dir(settings) / issue.name
        plan = fleet_plan(connection, target.resolve(), issues=[issue], worker=worker)
        plan.name = f"{plan.name}-{issue.name}"
        return report_state(lead(plan))


def merge_approved_pulls(connection: Connection) -> list[MergeResult]:
    """auto_merge_on_approval: merge the fleet's approved pull requests; a table artifact.
    A tracker that cannot list them is logged: the poll's issues still go on (the next
    poll merges them)."""
    try:
        merges = merge_approved(connection.tracker, connection.settings.auto_merge_on_approval)
    except TrackerError as exc:
        log.warning("auto-merge skipped this poll: %s", exc)
        return []
    if merges:
        rows = [{"pull": f"#{m.pull}", "issue": f"#{m.issue}", "merged": m.merged,
                 "reason": m.reason} for m in merges]  # fmt: skip
        create_table_artifact(
            table=rows, key="auto-merge", description=f"Auto-merge of {connection.name}"
        )
    return merges


def _numbers(numbers: list[int]) -> str:
    return ", ".join(f"#{n}" for n in numbers)


def publish_dispatches(dispatched: list[Dispatch], released: list[int], name: str) -> None:
    """A table artifact on the poller's run: which issue went to which run."""
    rows = [
        {"issue": f"#{d.issue}", "flow run": d.flow_run_name, "flow run id": str(d.flow_run_id),
         "action": "started" if d.started else "already running"}
        for d in dispatched
    ] + [{"issue": f"#{n}", "flow run": "", "flow run id": "",
          "action": "released (its run or claim was lost)"} for n in released]  # fmt: skip
    empty = {"issue": "", "flow run": "", "flow run id": "", "action": "no ready issue"}
    create_table_artifact(
        table=rows or [empty],
        key="issue-poller",
        description=f"Issues dispatched by this poll of {name}",
    )
