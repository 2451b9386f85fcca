"""Work units with Prefect task runs beside them (flows/_prefect.py): the work starts at
once, whatever Prefect's task runner is doing, and each task run ends with its unit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect import flow, get_client, task
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows._prefect import UnitTask
from flows.report import UnitResult
from flows.scheduler import Scheduler, build_tiers

pytestmark = pytest.mark.usefixtures("prefect_server")


@dataclass(frozen=True)
class Unit:
    name: str
    priority: int = 1
    continue_on_error: bool = True


def result_of(unit: Unit, worker: str, started: datetime) -> UnitResult:
    ended = datetime.now(UTC)
    return UnitResult(name=unit.name, priority=1, status="succeeded", attempts=1,
                      started_at=started, ended_at=ended,
                      duration_s=(ended - started).total_seconds(), worker=worker)  # fmt: skip


def run_units(
    units: list[Unit],
    work: Callable[[Unit, str], UnitResult],
    slots: int,
    task_run_threads: int,
    task_run: Callable[..., Any] | None = None,
) -> tuple[list[UnitResult], str]:
    """The units through the scheduler in a flow run; their results and the run's id.
    `task_run` replaces the function of the units' task runs."""
    index = {unit.name: position for position, unit in enumerate(units)}

    @flow(persist_result=False)
    def units_flow() -> tuple[list[UnitResult], str]:
        with UnitTask(work, units, "unit", slots, task_run_threads) as unit_task:
            if task_run is not None:
                unit_task.task = task(name="unit", task_run_name="{label}")(task_run)
            scheduler: Scheduler[Unit, UnitResult] = Scheduler(
                submit=lambda unit, worker, report: unit_task.submit(
                    index[unit.name], worker, report
                ),
                skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
                crashed=lambda u, w, e: UnitResult(
                    name=u.name, priority=1, status="failed", worker=w, log_tail=str(e)
                ),
                max_parallel=slots,
            )
            results, _ = scheduler.run(build_tiers(units))
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        return results, str(context.flow_run.id)

    return units_flow()


@pytest.mark.timeout(120)
def test_work_starts_at_once_even_when_task_runs_queue_behind_a_busy_runner() -> None:
    """Four units on four slots, but one thread for all task runs: the work of every unit
    still starts at once, and every unit still gets its task run, named after it."""
    starts: dict[str, float] = {}
    all_started = threading.Barrier(4, timeout=10)  # broken if any work waits for another

    def work(unit: Unit, worker: str) -> UnitResult:
        started = datetime.now(UTC)
        starts[unit.name] = time.monotonic()
        all_started.wait()
        return result_of(unit, worker, started)

    units = [Unit(f"u{i}") for i in range(4)]
    results, flow_run_id = run_units(units, work, slots=4, task_run_threads=1)
    assert [r.status for r in results] == ["succeeded"] * 4
    assert max(starts.values()) - min(starts.values()) < 5
    with get_client(sync_client=True) as client:
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        deadline = time.monotonic() + 60  # task runs are recorded asynchronously
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(flow_run_filter=flow_runs)
            if len(task_runs) == 4 and all(t.state and t.state.is_final() for t in task_runs):
                break
            time.sleep(0.2)
    assert sorted(t.name for t in task_runs) == ["p1 u0", "p1 u1", "p1 u2", "p1 u3"]
    assert all(t.state and t.state.is_completed() for t in task_runs)


@pytest.mark.timeout(120)
def test_many_instant_units_on_few_slots_never_stall() -> None:
    units = [Unit(f"u{i:02d}") for i in range(40)]
    started = time.perf_counter()
    results, _ = run_units(
        units, lambda unit, worker: result_of(unit, worker, datetime.now(UTC)), 2, 4
    )
    assert [r.status for r in results] == ["succeeded"] * 40
    assert {r.worker for r in results} == {"worker-01", "worker-02"}
    assert time.perf_counter() - started < 30


@pytest.mark.timeout(120)
def test_a_unit_whose_work_raises_is_reported_as_crashed_and_the_others_run() -> None:
    def work(unit: Unit, worker: str) -> UnitResult:
        if unit.name == "bad":
            raise RuntimeError("worker bug")
        return result_of(unit, worker, datetime.now(UTC))

    units = [Unit("good-1"), Unit("bad"), Unit("good-2")]
    results, _ = run_units(units, work, slots=2, task_run_threads=4)
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    assert "worker bug" in results[1].log_tail


@pytest.mark.timeout(120)
def test_a_unit_runs_and_reports_even_when_its_task_run_cannot_be_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    submit = ThreadPoolTaskRunner.submit

    def refuse_one(self: ThreadPoolTaskRunner[Any], task: Any, parameters: Any, *a: Any) -> Any:
        if parameters["label"] == "p1 unlucky":
            raise RuntimeError("Prefect API unreachable")
        return submit(self, task, parameters, *a)

    monkeypatch.setattr(ThreadPoolTaskRunner, "submit", refuse_one)
    units = [Unit("lucky"), Unit("unlucky")]
    results, _ = run_units(
        units, lambda unit, worker: result_of(unit, worker, datetime.now(UTC)), 2, 4
    )
    assert [r.status for r in results] == ["succeeded", "succeeded"]


@pytest.mark.timeout(120)
def test_a_task_run_that_fails_before_its_work_ends_changes_nothing_of_the_unit() -> None:
    """The report follows the work: a task run that crashes while its unit still works
    neither fails the unit nor frees its slot early."""
    running = 0
    most = 0
    lock = threading.Lock()

    def work(unit: Unit, worker: str) -> UnitResult:
        nonlocal running, most
        started = datetime.now(UTC)
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.3)
        with lock:
            running -= 1
        return result_of(unit, worker, started)

    def crashing_task_run(label: str, index: int, worker: str) -> None:
        raise RuntimeError("task engine broke")

    units = [Unit(f"u{i}") for i in range(4)]
    results, _ = run_units(units, work, slots=2, task_run_threads=4, task_run=crashing_task_run)
    assert [r.status for r in results] == ["succeeded"] * 4
    assert most == 2
