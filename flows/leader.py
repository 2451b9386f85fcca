"""The generic leader: matrix -> setup -> tiers of mapped workers -> report.

Both jobs are this pattern; only the work unit differs (a shell command, or an issue for
an agent). `lead` runs inside a Prefect flow run: the setup is a task run and every unit
has one beside it, named after its matrix entry; the scheduler bounds parallelism with
worker slots, and artifacts (tier tables, live progress, the markdown report) are
published on the way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic

from prefect import State, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed

from flows import _prefect
from flows.notify import Notifications, notify
from flows.report import (
    Report,
    RunFailed,
    SetupSummary,
    TierTiming,
    UnitResult,
    render_markdown,
    summarize,
    task_row,
    write_report,
)
from flows.scheduler import Observer, R, Scheduler, Tier, U, WorkUnit, interrupt_reason

log = logging.getLogger(__name__)


@dataclass
class LeaderPlan(Generic[U, R]):
    """What to run and how; the functions are plain and know nothing of Prefect."""

    kind: str
    name: str
    tiers: list[Tier[U]]
    work: Callable[[U, str], R]
    skipped: Callable[[U, str], R]
    crashed: Callable[[U, str, BaseException], R]
    max_parallel: int
    report_dir: Path
    fail_fast: bool = False
    setup: Callable[[], SetupSummary] | None = None
    describe: Callable[[U], str] = field(default=lambda unit: "")
    tier_barriers: bool = True  # False: priorities order the queue, no tier waits for another
    notifications: Notifications | None = None  # told how the run ended
    # entered before the setup, left once every unit has ended: e.g. holds the setup cache
    # against pruning, and ends what the units' commands left running (flows/leftovers.py)
    scope: Callable[[], AbstractContextManager[Any]] = nullcontext
    # stops the running units at once when the run is interrupted (given the reason), e.g.
    # kills their commands; by default they finish
    stop_units: Callable[[str], None] = field(default=lambda reason: None)

    @property
    def units(self) -> list[U]:
        return [unit for tier in self.tiers for unit in tier.units]


_observers: ContextVar[tuple[Observer, ...]] = ContextVar("leader_observers", default=())


@contextmanager
def observing(*observers: Observer) -> Iterator[None]:
    """Watch the units of leader runs started inside this block (e.g. a terminal table).

    A context variable rather than a flow parameter: observers are live objects, not data
    a deployment could be given.
    """
    token = _observers.set(_observers.get() + observers)
    try:
        yield
    finally:
        _observers.reset(token)


def heartbeat(worker: str, activity: str, cost_usd: float = 0.0) -> None:
    """Tell the observers of the current leader run what a worker is doing right now
    (e.g. an agent's turn) and what its unit has cost so far; a no-op outside one."""
    for observer in _observers.get():
        observer.unit_heartbeat(worker, activity, cost_usd)


def lead(plan: LeaderPlan[U, R]) -> Report:
    """Run a plan inside the current flow run and return its report.

    Interrupted (Ctrl-C, SIGTERM) during the setup or the units, it stops what runs
    (`stop_units`), skips what has not started, writes and publishes the report, then
    raises the interrupt."""
    observers = _observers.get()
    flow_run = FlowRunContext.get()
    flow_run_id = flow_run.flow_run.id if flow_run and flow_run.flow_run else None
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    publisher = _prefect.open_publisher(flow_run_id)
    progress = _Progress(plan, publisher)
    for observer in observers:
        observer.run_started(str(flow_run_id) if flow_run_id else None)
    try:
        with ExitStack() as scope:
            scope.enter_context(plan.scope())
            setup, interruption = _setup_unless_interrupted(plan, clock)
            if setup.status == "failed":
                why = interrupt_reason(interruption) if interruption else "setup failed"
                results = _skip_all(plan, why, [progress, *observers])
                timings: list[TierTiming] = []
            else:
                results, timings, interruption = _run_tiers(plan, [progress, *observers])
            interruption = _leave(scope, interruption)
        wall_s = time.perf_counter() - clock
        report = Report(
            kind=plan.kind,
            name=plan.name,
            flow_run_id=str(flow_run_id) if flow_run_id else None,
            started_at=started_at,
            ended_at=datetime.now(UTC),
            wall_s=round(wall_s, 3),
            summary=summarize(results, timings, wall_s),
            setup=setup,
            tiers=timings,
            tasks=results,
            interrupted=interrupt_reason(interruption) if interruption else None,
        )
        _publish_report(plan, report, publisher)
        if interruption is not None:
            raise interruption
        return report
    finally:
        _prefect.release_publisher(publisher)


def _leave(scope: ExitStack, interruption: BaseException | None) -> BaseException | None:
    """Leave the run's scope, which may take seconds (ending what the units' commands left
    running): an interrupt meanwhile is kept, like one during the units, to raise once the
    report is out."""
    try:
        scope.close()
    except Exception:
        raise
    except BaseException as exc:
        return interruption or exc
    return interruption


def _setup_unless_interrupted(
    plan: LeaderPlan[Any, Any], clock: float
) -> tuple[SetupSummary, BaseException | None]:
    """The setup's summary; interrupted (Ctrl-C, SIGTERM), a failed one and the interrupt,
    to raise once the report is out."""
    try:
        return _run_setup(plan.setup), None
    except Exception:
        raise
    except BaseException as exc:
        stopped = SetupSummary(
            cache_hit=False,
            duration_s=round(time.perf_counter() - clock, 3),
            status="failed",
            log_tail=f"setup stopped: {interrupt_reason(exc)}",
        )
        return stopped, exc


def _skip_all(plan: LeaderPlan[U, R], why: str, observers: Sequence[Observer]) -> list[R]:
    """Every unit skipped (the setup failed), each told to the observers."""
    results = [plan.skipped(unit, why) for unit in plan.units]
    for result in results:
        for observer in observers:
            observer.unit_finished(result)
    return results


def _publish_report(
    plan: LeaderPlan[Any, Any], report: Report, publisher: _prefect.ArtifactPublisher
) -> None:
    """The report as files, tier tables and a markdown artifact; the notifications."""
    tier_names = {tier.priority: tier.name for tier in plan.tiers}
    write_report(report, plan.report_dir, tier_names)
    _publish_tables(plan, report, publisher)
    publisher.markdown(
        _prefect.artifact_key(plan.kind, plan.name, "report"),
        render_markdown(report, tier_names),
        f"{plan.kind} report: {plan.name}",
    )
    if plan.notifications is not None:
        _notify(report, plan.notifications)


def report_state(report: Report) -> State[Any]:
    """The flow's final state follows the report (a returned Failed marks the run red)."""
    s = report.summary
    message = f"{s.succeeded}/{s.total} succeeded, {s.failed + s.timed_out} failed"
    if report.setup.status == "failed":
        message = "setup failed"
    elif report.ok:
        return Completed(message=message, data=report)
    return Failed(message=message, data=RunFailed(message, report))


def _notify(report: Report, notifications: Notifications) -> None:
    """Send the outcome to the configured channels; a failed delivery is only a warning,
    in the run's logs (the UI) and on the terminal (which shows no run log lines)."""
    link = _prefect.flow_run_url(report.flow_run_id, lasting=True)
    after = "`prefect server start`" if _prefect.on_temporary_server() else None
    problems = notify(report, notifications, link, after)
    for problem in problems:
        get_run_logger().warning(problem)
        log.warning(problem)


def _run_setup(setup: Callable[[], SetupSummary] | None) -> SetupSummary:
    if setup is None:
        return SetupSummary(cache_hit=False, duration_s=0.0, status="none")

    def run_setup() -> State[Any]:
        summary = setup()
        if summary.status == "failed":
            return Failed(message="setup failed", data=summary)
        if summary.cache_hit:
            return Completed(name="Cached", message=f"cache hit {summary.key}", data=summary)
        return Completed(message=f"installed, cache {summary.key}", data=summary)

    setup_task = task(
        name="setup", task_run_name="setup", cache_policy=NO_CACHE, persist_result=False
    )(run_setup)
    state = setup_task(return_state=True)
    result = _prefect.state_result(state)
    assert isinstance(result, SetupSummary)
    return result


def _run_tiers(
    plan: LeaderPlan[U, R], observers: Sequence[Observer]
) -> tuple[list[R], list[TierTiming], BaseException | None]:
    """The units' results and timings, and the interrupt that stopped them, if one did."""
    units = plan.units
    index = {id(unit): position for position, unit in enumerate(units)}
    with _prefect.UnitTask(plan.work, units, f"{plan.kind}-worker", plan.max_parallel) as tasks:
        scheduler: Scheduler[U, R] = Scheduler(
            submit=lambda unit, worker, report: tasks.submit(index[id(unit)], worker, report),
            skipped=plan.skipped,
            crashed=plan.crashed,
            max_parallel=plan.max_parallel,
            fail_fast=plan.fail_fast,
            observers=observers,
            barriers=plan.tier_barriers,
            on_interrupt=plan.stop_units,
        )
        try:
            results, timings = scheduler.run(plan.tiers)
        except BaseException as exc:  # the units' threads are waited for on the way out
            failed = isinstance(exc, Exception)  # what it was is raised, not told to units
            plan.stop_units("the run failed" if failed else interrupt_reason(exc))
            raise
        return results, timings, scheduler.interruption


def _publish_tables(
    plan: LeaderPlan[U, R], report: Report, publisher: _prefect.ArtifactPublisher
) -> None:
    units = {unit.name: unit for unit in plan.units}
    for tier in plan.tiers:
        rows = [
            task_row(result, plan.describe(units[result.name]))
            for result in report.tasks
            if result.priority == tier.priority
        ]
        if not rows:
            continue
        publisher.table(
            _prefect.artifact_key(plan.kind, plan.name, f"tier-{tier.priority}"),
            rows,
            f"Tier {tier.priority} ({tier.name}) of {plan.name}",
        )


class _Progress:
    """Keeps the live progress artifact up to date as units finish."""

    def __init__(self, plan: LeaderPlan[Any, Any], publisher: _prefect.ArtifactPublisher):
        self._total = len(plan.units)
        self._done = 0
        self._lock = threading.Lock()  # units finish on many worker threads
        self._publisher = publisher
        publisher.start_progress(
            _prefect.artifact_key(plan.kind, plan.name, "progress"),
            f"0/{self._total} done",
        )

    def run_started(self, flow_run_id: str | None) -> None:
        pass

    def unit_started(self, unit: WorkUnit, worker: str) -> None:
        pass

    def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
        pass

    def unit_finished(self, result: UnitResult) -> None:
        with self._lock:
            self._done += 1
            done = self._done
        percent = 100.0 * done / self._total if self._total else 100.0
        self._publisher.progress(percent, f"{done}/{self._total} done, last: {result.name}")
