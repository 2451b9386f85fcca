"""The one scheduler both jobs share: run work units tier by tier, in parallel inside a
tier, never more than `max_parallel` at once, with continue-on-error and fail-fast.

It knows nothing of Prefect: `submit(unit, worker)` starts a unit and returns a
`concurrent.futures.Future`; the leader passes one that runs a Prefect task, tests pass
a plain thread pool. Each running unit holds a named worker slot ("worker-01"...), which
is both the concurrency limit and the identity the reports and workspaces use.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from flows.report import TierTiming, UnitResult


class WorkUnit(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def continue_on_error(self) -> bool: ...


U = TypeVar("U", bound=WorkUnit)
R = TypeVar("R", bound=UnitResult)


@dataclass(frozen=True)
class Tier(Generic[U]):
    priority: int
    name: str
    units: tuple[U, ...]


def build_tiers(units: Sequence[U], names: dict[int, str] | None = None) -> list[Tier[U]]:
    """Group units by priority, lowest first, keeping their order inside a tier."""
    names = names or {}
    by_priority: dict[int, list[U]] = {}
    for unit in units:
        by_priority.setdefault(unit.priority, []).append(unit)
    return [
        Tier(priority, names.get(priority, f"priority-{priority}"), tuple(by_priority[priority]))
        for priority in sorted(by_priority)
    ]


def worker_names(count: int) -> list[str]:
    return [f"worker-{i:02d}" for i in range(1, count + 1)]


class Observer(Protocol):
    """Watches a leader run; every method is called from worker threads too."""

    def run_started(self, flow_run_id: str | None) -> None: ...
    def unit_started(self, unit: WorkUnit, worker: str) -> None: ...
    def unit_finished(self, result: UnitResult) -> None: ...


@dataclass
class _Halt:
    """Why scheduling stopped, if it did. `now`: stop this tier; `after_tier`: the next."""

    now: str | None = None
    after_tier: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stop_now(self, reason: str) -> None:
        with self.lock:
            self.now = self.now or reason

    def stop_after_tier(self, reason: str) -> None:
        with self.lock:
            self.after_tier = self.after_tier or reason

    @property
    def reason(self) -> str | None:
        return self.now or self.after_tier


@dataclass
class Scheduler(Generic[U, R]):
    """Runs tiers of units through `submit`; results come back in matrix order."""

    submit: Callable[[U, str], Future[R]]
    skipped: Callable[[U, str], R]
    crashed: Callable[[U, str, BaseException], R]
    max_parallel: int
    fail_fast: bool = False
    observers: Sequence[Observer] = ()
    barriers: bool = True

    def run(self, tiers: Sequence[Tier[U]]) -> tuple[list[R], list[TierTiming]]:
        """Run the tiers in priority order.

        With barriers (the pipeline: later tiers depend on earlier ones) a tier starts when
        the previous one has ended. Without (the fleet: issues are independent) priority
        only orders the queue, so a free worker takes the most urgent unit left at once.
        """
        if not self.barriers and len(tiers) > 1:
            merged = Tier(
                tiers[0].priority, "by priority", tuple(u for t in tiers for u in t.units)
            )
            tiers = [merged]
        halt = _Halt()
        results: list[R] = []
        timings: list[TierTiming] = []
        for tier in tiers:
            if halt.reason:
                results += [self._skip(unit, halt.reason) for unit in tier.units]
                continue
            started = time.perf_counter()
            slots = min(self.max_parallel, len(tier.units))
            results += self._run_tier(tier, slots, halt)
            wall = time.perf_counter() - started
            timings.append(TierTiming(
                priority=tier.priority, name=tier.name, tasks=len(tier.units), slots=slots,
                wall_s=round(wall, 4),
            ))  # fmt: skip
        return results, timings

    def _run_tier(self, tier: Tier[U], slots: int, halt: _Halt) -> list[R]:
        free: queue.SimpleQueue[str] = queue.SimpleQueue()
        for name in worker_names(slots):
            free.put(name)
        done: dict[str, R] = {}
        finished = threading.Semaphore(0)  # released by each done callback
        submitted = 0
        for unit in tier.units:
            worker = free.get()  # blocks until a slot is free: the max_parallel limit
            if halt.now:
                free.put(worker)
                done[unit.name] = self._skip(unit, halt.now)
                continue
            for observer in self.observers:
                observer.unit_started(unit, worker)
            try:
                future = self.submit(unit, worker)
            except Exception as exc:
                self._finish(self.crashed(unit, worker, exc), unit, worker, free, halt, done)
                continue

            def on_done(f: Future[R], u: U = unit, w: str = worker) -> None:
                try:
                    self._finish(self._outcome(f, u, w), u, w, free, halt, done)
                finally:
                    finished.release()

            future.add_done_callback(on_done)
            submitted += 1
        for _ in range(submitted):
            finished.acquire()
        return [done[unit.name] for unit in tier.units]

    def _outcome(self, future: Future[R], unit: U, worker: str) -> R:
        try:
            return future.result()
        except BaseException as exc:
            return self.crashed(unit, worker, exc)

    def _finish(
        self,
        result: R,
        unit: U,
        worker: str,
        free: queue.SimpleQueue[str],
        halt: _Halt,
        done: dict[str, R],
    ) -> None:
        done[unit.name] = result
        if result.failed:
            reason = f"{unit.name} {result.status.replace('_', ' ')}"
            if self.fail_fast:
                halt.stop_now(f"fail_fast: {reason}")
            elif not unit.continue_on_error:
                halt.stop_after_tier(f"{reason} (continue_on_error is false)")
        free.put(worker)  # after the halt decision, so the next unit sees it
        for observer in self.observers:
            observer.unit_finished(result)

    def _skip(self, unit: U, reason: str) -> R:
        result = self.skipped(unit, reason)
        for observer in self.observers:
            observer.unit_finished(result)
        return result
