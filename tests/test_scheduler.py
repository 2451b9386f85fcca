"""The shared scheduler, driven by a plain thread pool (no Prefect)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from flows.report import UnitResult
from flows.scheduler import Scheduler, WorkUnit, build_tiers


@dataclass(frozen=True)
class Unit:
    name: str
    priority: int
    seconds: float = 0.05
    fails: bool = False
    crashes: bool = False
    continue_on_error: bool = True


def work(unit: Unit, worker: str) -> UnitResult:
    if unit.crashes:
        raise RuntimeError("boom")
    started = datetime.now(UTC)
    time.sleep(unit.seconds)
    return UnitResult(
        name=unit.name, priority=unit.priority, status="failed" if unit.fails else "succeeded",
        attempts=1, started_at=started, ended_at=datetime.now(UTC), duration_s=unit.seconds,
        worker=worker,
    )  # fmt: skip


def skipped(unit: Unit, reason: str) -> UnitResult:
    return UnitResult(name=unit.name, priority=unit.priority, status="skipped", log_tail=reason)


def crashed(unit: Unit, worker: str, error: BaseException) -> UnitResult:
    return UnitResult(name=unit.name, priority=unit.priority, status="failed", worker=worker,
                      log_tail=str(error))  # fmt: skip


def pooled(
    pool: ThreadPoolExecutor,
    unit_work: Callable[[Unit, str], UnitResult],
    max_parallel: int,
    **options: Any,
) -> Scheduler[Unit, UnitResult]:
    """A scheduler that runs `unit_work(unit, worker)` for each unit on `pool`."""
    return Scheduler(
        submit=lambda unit, worker, report: pool.submit(unit_work, unit, worker),
        skipped=skipped, crashed=crashed, max_parallel=max_parallel, **options,
    )  # fmt: skip


def run(units: list[Unit], max_parallel: int, fail_fast: bool = False) -> list[UnitResult]:
    with ThreadPoolExecutor(max_workers=max_parallel) as pool:
        scheduler = pooled(pool, work, max_parallel, fail_fast=fail_fast)
        results, _ = scheduler.run(build_tiers(units))
    return results


def test_tiers_run_in_priority_order() -> None:
    units = [Unit(f"t{p}-{i}", p, 0.05 * (i + 1)) for p in (3, 1, 2) for i in range(3)]
    results = run(units, max_parallel=5)
    assert [r.name for r in results][:3] == ["t1-0", "t1-1", "t1-2"]
    by_tier = {p: [r for r in results if r.priority == p] for p in (1, 2, 3)}
    for earlier, later in ((1, 2), (2, 3)):
        last_end = max(r.ended_at for r in by_tier[earlier] if r.ended_at)
        first_start = min(r.started_at for r in by_tier[later] if r.started_at)
        assert first_start >= last_end


def test_never_more_than_max_parallel_and_slots_unique() -> None:
    running: set[str] = set()
    peak = 0
    lock = threading.Lock()

    class Watch:
        def run_started(self, flow_run_id: str | None) -> None:
            pass

        def unit_started(self, unit: Unit, worker: str) -> None:
            nonlocal peak
            with lock:
                assert worker not in running  # a slot is never shared
                running.add(worker)
                peak = max(peak, len(running))

        def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
            pass

        def unit_finished(self, result: UnitResult) -> None:
            with lock:
                running.discard(result.worker or "")

    units = [Unit(f"u{i}", 1, 0.02) for i in range(40)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        scheduler: Scheduler[Unit, UnitResult] = Scheduler(
            submit=lambda unit, worker, report: pool.submit(work, unit, worker),
            skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
            crashed=lambda u, w, e: UnitResult(name=u.name, priority=1, status="failed"),
            max_parallel=3,
            observers=[Watch()],
        )
        results, timings = scheduler.run(build_tiers(units))
    assert peak == 3
    assert {r.worker for r in results} == {"worker-01", "worker-02", "worker-03"}
    assert timings[0].slots == 3


def test_failure_and_crash_do_not_stop_siblings_or_next_tier() -> None:
    units = [Unit("bad", 1, fails=True), Unit("crash", 1, crashes=True), Unit("good", 1),
             Unit("next", 2)]  # fmt: skip
    results = {r.name: r for r in run(units, max_parallel=2)}
    assert results["bad"].status == "failed"
    assert results["crash"].status == "failed" and "boom" in results["crash"].log_tail
    assert results["good"].status == "succeeded"
    assert results["next"].status == "succeeded"


def test_fail_fast_stops_scheduling() -> None:
    units = [Unit("bad", 1, 0.01, fails=True)] + [Unit(f"later{i}", 1, 0.2) for i in range(4)]
    units.append(Unit("tier2", 2))
    results = {r.name: r for r in run(units, max_parallel=1, fail_fast=True)}
    assert results["bad"].status == "failed"
    assert all(results[f"later{i}"].status == "skipped" for i in range(4))
    assert results["tier2"].status == "skipped"
    assert "fail_fast: bad failed" in results["tier2"].log_tail


def test_continue_on_error_false_skips_later_tiers_only() -> None:
    units = [Unit("strict", 1, 0.01, fails=True, continue_on_error=False), Unit("sibling", 1, 0.1),
             Unit("tier2", 2)]  # fmt: skip
    results = {r.name: r for r in run(units, max_parallel=2)}
    assert results["sibling"].status == "succeeded"
    assert results["tier2"].status == "skipped"


def test_submit_errors_fail_only_their_unit() -> None:
    def submit(unit: Unit, worker: str, report: object) -> Future[UnitResult]:
        if unit.name == "unlucky":
            raise ConnectionError("API down")
        future: Future[UnitResult] = Future()
        future.set_result(work(unit, worker))
        return future

    scheduler: Scheduler[Unit, UnitResult] = Scheduler(
        submit=submit,
        skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
        crashed=lambda u, w, e: UnitResult(name=u.name, priority=1, status="failed",
                                           log_tail=str(e)),
        max_parallel=2,
    )  # fmt: skip
    results, _ = scheduler.run(build_tiers([Unit("unlucky", 1), Unit("fine", 1)]))
    assert [r.status for r in results] == ["failed", "succeeded"]
    assert results[0].log_tail == "API down"


def test_without_barriers_priority_orders_but_nobody_waits() -> None:
    units = [Unit("slow-urgent", 1, 0.6), Unit("quick-urgent", 1, 0.05), Unit("normal", 2, 0.05)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        scheduler: Scheduler[Unit, UnitResult] = Scheduler(
            submit=lambda unit, worker, report: pool.submit(work, unit, worker),
            skipped=lambda u, r: UnitResult(name=u.name, priority=u.priority, status="skipped"),
            crashed=lambda u, w, e: UnitResult(name=u.name, priority=u.priority, status="failed"),
            max_parallel=2,
            barriers=False,
        )
        results, timings = scheduler.run(build_tiers(units))
    by_name = {r.name: r for r in results}
    slow_end = by_name["slow-urgent"].ended_at
    normal_start = by_name["normal"].started_at
    assert slow_end and normal_start and normal_start < slow_end  # did not wait for tier 1
    assert by_name["quick-urgent"].started_at <= normal_start  # but urgent went first
    assert len(timings) == 1 and timings[0].tasks == 3


def test_a_reported_result_frees_the_slot_before_the_bookkeeping_ends() -> None:
    """The next unit starts as soon as a worker reports, not when its future resolves."""
    bookkeeping = threading.Event()
    starts: dict[str, float] = {}
    reported: dict[str, float] = {}

    def submit(unit: Unit, worker: str, report: Callable[[UnitResult], None]) -> Future[UnitResult]:
        future: Future[UnitResult] = Future()

        def run() -> None:
            starts[unit.name] = time.perf_counter()
            result = work(unit, worker)
            reported[unit.name] = time.perf_counter()
            report(result)
            if unit.name == "first":
                bookkeeping.wait(5)  # the first unit's task run takes long to end
            future.set_result(result)

        threading.Thread(target=run).start()
        return future

    scheduler: Scheduler[Unit, UnitResult] = Scheduler(
        submit=submit,
        skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
        crashed=lambda u, w, e: UnitResult(name=u.name, priority=1, status="failed"),
        max_parallel=1,
    )
    outcome: list[list[UnitResult]] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            scheduler.run(build_tiers([Unit("first", 1), Unit("second", 1)]))[0]
        )
    )
    runner.start()
    deadline = time.perf_counter() + 5
    while "second" not in reported and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert starts["second"] >= reported["first"]  # one slot: strictly one after the other
    assert runner.is_alive()  # the tier still waits for the first task run to end
    bookkeeping.set()
    runner.join(5)
    assert [r.status for r in outcome[0]] == ["succeeded", "succeeded"]
    assert [r.worker for r in outcome[0]] == ["worker-01", "worker-01"]


@pytest.mark.parametrize("broken_hook", ["unit_started", "unit_finished"])
def test_a_broken_observer_fails_the_run_instead_of_hanging_it(broken_hook: str) -> None:
    class Broken:
        def run_started(self, flow_run_id: str | None) -> None:
            pass

        def unit_started(self, unit: Unit, worker: str) -> None:
            if broken_hook == "unit_started" and unit.name == "u3":
                raise RuntimeError("observer bug")

        def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
            pass

        def unit_finished(self, result: UnitResult) -> None:
            if broken_hook == "unit_finished" and result.name == "u3":
                raise RuntimeError("observer bug")

    units = [Unit(f"u{i}", 1, 0.01) for i in range(6)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        scheduler: Scheduler[Unit, UnitResult] = Scheduler(
            submit=lambda unit, worker, report: pool.submit(
                lambda: report(work(unit, worker)) or work(unit, worker)
            ),
            skipped=lambda u, r: UnitResult(name=u.name, priority=1, status="skipped"),
            crashed=lambda u, w, e: UnitResult(name=u.name, priority=1, status="failed"),
            max_parallel=2,
            observers=[Broken()],
        )
        with pytest.raises(RuntimeError, match="observer bug"):
            scheduler.run(build_tiers(units))


def wait_for_stop(stopped: threading.Event, unit: Unit, worker: str) -> UnitResult:
    """A unit that runs until `stopped` is set (failed then) or 60 s pass (succeeded)."""
    begun = datetime.now(UTC)
    halted = stopped.wait(60)
    return UnitResult(
        name=unit.name, priority=unit.priority, status="failed" if halted else "succeeded",
        attempts=1, started_at=begun, ended_at=datetime.now(UTC), worker=worker,
    )  # fmt: skip


def test_an_interrupt_stops_the_units_skips_the_rest_and_is_kept_for_the_caller() -> None:
    """Ctrl-C while units run: no unit starts after, the running ones are told to stop
    (again on a second Ctrl-C) and their results kept, and the interrupt is handed back,
    not lost."""
    stopped = threading.Event()
    reasons: list[str] = []
    started: list[str] = []

    def stoppable(unit: Unit, worker: str) -> UnitResult:
        started.append(unit.name)
        return wait_for_stop(stopped, unit, worker)

    def on_interrupt(reason: str) -> None:
        reasons.append(reason)
        if len(reasons) == 2:  # the units stop only when told twice
            stopped.set()

    units = [Unit(f"a{i}", 1) for i in range(4)] + [Unit("b0", 2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        scheduler = pooled(pool, stoppable, 2, on_interrupt=on_interrupt)

        def interrupt_twice_once_two_run() -> None:
            while len(started) < 2:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
            while not reasons:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_twice_once_two_run)
        interrupter.start()
        began = time.monotonic()
        results, _ = scheduler.run(build_tiers(units))
        interrupter.join()
    assert time.monotonic() - began < 10
    assert isinstance(scheduler.interruption, KeyboardInterrupt)
    assert reasons == ["interrupted (SIGINT)"] * 2
    assert sorted(started) == ["a0", "a1"]
    statuses = {r.name: (r.status, r.log_tail) for r in results}
    assert statuses["a0"][0] == statuses["a1"][0] == "failed"  # stopped, result kept
    for name in ("a2", "a3", "b0"):
        assert statuses[name] == ("skipped", "interrupted (SIGINT)")


def test_an_interrupt_given_to_another_thread_is_handled_at_once() -> None:
    """The kernel may hand a process's signal to any thread, and Python runs its handler in
    the main thread only when that thread runs Python: the scheduler's wait must not hold
    it up until the units end."""
    stopped = threading.Event()
    unit_threads: list[int] = []

    def stoppable(unit: Unit, worker: str) -> UnitResult:
        unit_threads.append(threading.get_ident())
        return wait_for_stop(stopped, unit, worker)

    def interrupt_a_unit_thread() -> None:
        while not unit_threads:
            time.sleep(0.01)
        signal.pthread_kill(unit_threads[0], signal.SIGINT)

    with ThreadPoolExecutor(max_workers=1) as pool:
        scheduler = pooled(pool, stoppable, 1, on_interrupt=lambda reason: stopped.set())
        interrupter = threading.Thread(target=interrupt_a_unit_thread)
        interrupter.start()
        began = time.monotonic()
        results, _ = scheduler.run(build_tiers([Unit("a0", 1), Unit("a1", 1)]))
        interrupter.join()
    assert time.monotonic() - began < 10
    assert isinstance(scheduler.interruption, KeyboardInterrupt)
    assert [r.status for r in results] == ["failed", "skipped"]


def test_what_breaks_the_scheduler_thread_is_raised_not_taken_for_an_interrupt() -> None:
    class Exits:
        def run_started(self, flow_run_id: str | None) -> None:
            pass

        def unit_started(self, unit: WorkUnit, worker: str) -> None:
            raise SystemExit(3)

        def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
            pass

        def unit_finished(self, result: UnitResult) -> None:
            pass

    interrupts: list[str] = []
    with ThreadPoolExecutor(max_workers=1) as pool:
        scheduler = pooled(pool, work, 1, observers=[Exits()], on_interrupt=interrupts.append)
        with pytest.raises(SystemExit):
            scheduler.run(build_tiers([Unit("a", 1)]))
    assert interrupts == [] and scheduler.interruption is None


def test_an_interrupt_before_the_scheduler_thread_launched_skips_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def interrupted_start(thread: threading.Thread) -> None:
        raise KeyboardInterrupt  # as if Ctrl-C came before the thread was launched

    monkeypatch.setattr("flows.scheduler.LAUNCH_WAIT_S", 0.1)
    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    interrupts: list[str] = []
    scheduler: Scheduler[Unit, UnitResult] = Scheduler(
        submit=lambda unit, worker, report: pytest.fail("nothing may start"),
        skipped=skipped, crashed=crashed, max_parallel=2, on_interrupt=interrupts.append,
    )  # fmt: skip
    results, timings = scheduler.run(build_tiers([Unit("a", 1), Unit("b", 2)]))
    assert [(r.name, r.status, r.log_tail) for r in results] == [
        ("a", "skipped", "interrupted (SIGINT)"), ("b", "skipped", "interrupted (SIGINT)"),
    ]  # fmt: skip
    assert timings == [] and interrupts == ["interrupted (SIGINT)"]
    assert isinstance(scheduler.interruption, KeyboardInterrupt)
