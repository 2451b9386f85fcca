"""Work units as Prefect task runs (flows/_prefect.py): the scheduler gets each result before
Prefect records the end of its task run, and that recording never stalls the run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prefect import flow

from flows._prefect import UnitTask, task_runner
from flows.report import UnitResult
from flows.scheduler import Scheduler, build_tiers

pytestmark = pytest.mark.usefixtures("prefect_server")


@dataclass(frozen=True)
class Unit:
    name: str
    priority: int = 1
    continue_on_error: bool = True


def instant(unit: Unit, worker: str) -> UnitResult:
    now = datetime.now(UTC)
    return UnitResult(name=unit.name, priority=1, status="succeeded", attempts=1,
                      started_at=now, ended_at=now, duration_s=0.0, worker=worker)  # fmt: skip


def test_a_finished_unit_waits_only_for_the_units_its_slot_went_to() -> None:
    """Even with a settle time far longer than the run, 40 instant units on 2 slots finish
    at once: a finished unit's bookkeeping waits for the start of the unit it handed its
    slot to, never for units queued behind a busy thread pool, nor at the end of a tier."""
    units = [Unit(f"u{i:02d}") for i in range(40)]
    index = {unit.name: position for position, unit in enumerate(units)}

    @flow(persist_result=False)
    def run_units() -> tuple[list[UnitResult], float]:
        unit_task = UnitTask(instant, units, "instant", settle_s=60.0)
        with task_runner(2) as runner:
            scheduler: Scheduler[Unit, UnitResult] = Scheduler(
                submit=lambda unit, worker, report: unit_task.submit(
                    runner, index[unit.name], worker, report
                ),
                skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
                crashed=lambda u, w, e: UnitResult(name=u.name, priority=1, status="failed"),
                max_parallel=2,
            )
            started = time.perf_counter()
            results, _ = scheduler.run(build_tiers(units))
            return results, time.perf_counter() - started

    results, seconds = run_units()
    assert [r.status for r in results] == ["succeeded"] * 40
    assert {r.worker for r in results} == {"worker-01", "worker-02"}
    assert seconds < 20, f"{seconds:.1f}s: some unit's bookkeeping waited out its settle time"
