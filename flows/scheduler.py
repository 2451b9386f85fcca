"""The one scheduler both jobs share: run work units tier by tier, in parallel inside a
tier, never more than `max_parallel` at once, with continue-on-error and fail-fast.

It knows nothing of Prefect: `submit(unit, worker, report)` starts a unit and returns a
`concurrent.futures.Future`; the leader passes one that also gives the unit a Prefect
task run, tests pass a plain thread pool. Each running unit holds a named worker slot
("worker-01"...), which is both the concurrency limit and the identity the reports and
workspaces use.

A unit's slot is free the moment its work is done: `report(result)`, called by the
worker as soon as it has its result, starts the next unit on that slot while the
bookkeeping of the finished one (its task run's final state) goes on beside it. Units
whose worker never reports are finished by their future.

An interrupt (Ctrl-C, or a signal handler's exception) starts no unit more: the running
ones are told to stop (`on_interrupt`, again on every further interrupt) and waited for,
the rest are skipped, and `run` returns every result with the interrupt in
`interruption`, for the caller to report and then raise.
"""

from __future__ import annotations

import contextvars
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from flows.interrupts import result_of
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
    def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None: ...
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


Reporter = Callable[[R], None]  # a worker hands its result to the scheduler
# An interrupt during the start of the scheduler's thread: how long to wait for the thread
# to show it has launched before taking it that it never did.
LAUNCH_WAIT_S = 5.0


@dataclass
class Scheduler(Generic[U, R]):
    """Runs tiers of units through `submit`; results come back in matrix order."""

    submit: Callable[[U, str, Reporter[R]], Future[R]]
    skipped: Callable[[U, str], R]
    crashed: Callable[[U, str, BaseException], R]
    max_parallel: int
    fail_fast: bool = False
    observers: Sequence[Observer] = ()
    barriers: bool = True
    on_interrupt: Callable[[str], None] = field(default=lambda reason: None)
    # set by `run` when it was interrupted: what to raise once the results are reported
    interruption: BaseException | None = field(default=None, init=False)

    def run(self, tiers: Sequence[Tier[U]]) -> tuple[list[R], list[TierTiming]]:
        """Run the tiers in priority order.

        With barriers (the pipeline: later tiers depend on earlier ones) a tier starts when
        the previous one has ended. Without (the fleet: issues are independent) priority
        only orders the queue, so a free worker takes the most urgent unit left at once.

        The tiers run on a thread of their own; this one only waits for them, so that an
        interrupt (raised in the main thread) lands in that wait, never halfway through
        starting a unit.
        """
        if not self.barriers and len(tiers) > 1:
            merged = Tier(
                tiers[0].priority, "by priority", tuple(u for t in tiers for u in t.units)
            )
            tiers = [merged]
        halt = _Halt()
        launched = threading.Event()
        outcome: Future[tuple[list[R], list[TierTiming]]] = Future()
        runner = threading.Thread(  # in this thread's context: a flow run's, say
            target=contextvars.copy_context().run,
            args=(self._run_into, tiers, halt, launched, outcome),
            name="scheduler",
            daemon=True,
        )
        if not self._start(runner, launched, halt):  # interrupted before it launched
            return [self._skip(unit, halt.reason or "") for t in tiers for unit in t.units], []
        return self._wait(outcome, halt)

    def _start(self, runner: threading.Thread, launched: threading.Event, halt: _Halt) -> bool:
        """Start the scheduler's thread. An interrupt meanwhile stops the run as one during
        the wait would; False if it came before the thread launched (nothing ran)."""
        try:
            runner.start()
        except BaseException as exc:
            if isinstance(exc, Exception):
                raise
            self._interrupted(exc, halt)
            return launched.wait(LAUNCH_WAIT_S)
        return True

    def _wait(
        self, outcome: Future[tuple[list[R], list[TierTiming]]], halt: _Halt
    ) -> tuple[list[R], list[TierTiming]]:
        """The scheduler thread's outcome; each interrupt meanwhile is handled (one that
        cuts into the handling of another too) and the wait goes on."""
        pending: BaseException | None = None
        while True:
            try:
                if pending is not None:
                    handling, pending = pending, None
                    self._interrupted(handling, halt)
                return result_of(outcome)  # in slices: the interrupt lands in this wait
            except BaseException as exc:
                if outcome.done() or isinstance(exc, Exception):
                    raise  # what broke the run (a callback), raised in the scheduler thread
                pending = exc

    def _run_into(
        self,
        tiers: Sequence[Tier[U]],
        halt: _Halt,
        launched: threading.Event,
        outcome: Future[tuple[list[R], list[TierTiming]]],
    ) -> None:
        launched.set()
        try:
            outcome.set_result(self._run_tiers(tiers, halt))
        except BaseException as exc:
            outcome.set_exception(exc)

    def _run_tiers(self, tiers: Sequence[Tier[U]], halt: _Halt) -> tuple[list[R], list[TierTiming]]:
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

    def _interrupted(self, interrupt: BaseException, halt: _Halt) -> None:
        """Start no unit more, and tell the running ones to stop (again, on a further
        interrupt: the pipeline then kills its commands at once)."""
        self.interruption = self.interruption or interrupt
        reason = interrupt_reason(interrupt)
        halt.stop_now(reason)
        self.on_interrupt(reason)

    def _run_tier(self, tier: Tier[U], slots: int, halt: _Halt) -> list[R]:
        run = _TierRun(self, tier, halt)
        run.release(*worker_names(slots))
        return run.wait()

    def _outcome(self, future: Future[R], unit: U, worker: str) -> R:
        try:
            return future.result()
        except BaseException as exc:
            return self.crashed(unit, worker, exc)

    def _judge(self, result: R, unit: U, halt: _Halt) -> None:
        """Stop scheduling after a failure when the config says so."""
        if result.failed:
            reason = f"{unit.name} {result.status.replace('_', ' ')}"
            if self.fail_fast:
                halt.stop_now(f"fail_fast: {reason}")
            elif not unit.continue_on_error:
                halt.stop_after_tier(f"{reason} (continue_on_error is false)")

    def _skip(self, unit: U, reason: str) -> R:
        result = self.skipped(unit, reason)
        for observer in self.observers:
            observer.unit_finished(result)
        return result


def interrupt_reason(exc: BaseException) -> str:
    """`interrupted (SIGTERM)`: what stopped the run, for the report."""
    number = signal.SIGINT if isinstance(exc, KeyboardInterrupt) else getattr(exc, "signal", None)
    if isinstance(number, int) and number in signal.valid_signals():
        return f"interrupted ({signal.Signals(number).name})"
    return f"interrupted ({exc.__class__.__name__})"


class _TierRun(Generic[U, R]):
    """One tier in flight. A released slot goes to the next waiting unit at once, on the
    thread that released it (a worker reporting its result): no hop through a dispatcher
    thread on the way from one unit's end to the next one's start.
    """

    def __init__(self, scheduler: Scheduler[U, R], tier: Tier[U], halt: _Halt) -> None:
        self._scheduler = scheduler
        self._tier = tier
        self._halt = halt
        self._waiting = deque(tier.units)
        self._free: deque[str] = deque()
        self._draining = False  # some thread is handing free slots to waiting units
        self._pending_futures = 0
        self._results: dict[str, R] = {}
        self._error: BaseException | None = None  # a broken callback: raised by wait()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    def release(self, *workers: str) -> None:
        """Give slots back; start waiting units on every free slot."""
        with self._lock:
            self._free.extend(workers)
            if self._draining:
                return  # the draining thread picks these up before it stops
            self._draining = True
        while True:
            with self._lock:
                if not (self._free and self._waiting):
                    self._draining = False
                    return
                worker, unit = self._free.popleft(), self._waiting.popleft()
            try:
                self._start(unit, worker)
            except BaseException as exc:
                self._fail(exc)
                raise

    def wait(self) -> list[R]:
        """Every unit's result, in matrix order, once every task run has ended too. Raises
        what broke a callback (an observer, `skipped`, `crashed`): never waits forever."""
        units = self._tier.units
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._error is not None
                    or (len(self._results) == len(units) and not self._pending_futures)
                )
            )
            if self._error is not None:
                raise self._error
        return [self._results[unit.name] for unit in units]

    def _fail(self, error: BaseException) -> None:
        """A callback broke: start nothing more, and let wait() raise `error`."""
        self._halt.stop_now(f"the run failed: {error!r}")
        with self._changed:
            self._error = self._error or error
            self._draining = False
            self._changed.notify_all()

    def _start(self, unit: U, worker: str) -> None:
        scheduler = self._scheduler
        if self._halt.now:
            self._record(unit, scheduler._skip(unit, self._halt.now))
            self.release(worker)
            return
        for observer in scheduler.observers:
            observer.unit_started(unit, worker)
        report: _Once[R] = _Once(lambda result: self._finish(unit, worker, result))
        with self._lock:
            self._pending_futures += 1
        try:
            future = scheduler.submit(unit, worker, report)
        except Exception as exc:
            self._future_resolved()
            report(scheduler.crashed(unit, worker, exc))
            return

        def resolved(f: Future[R]) -> None:
            try:
                if not report.called:  # the worker died before it could report
                    report(scheduler._outcome(f, unit, worker))
            except BaseException as exc:
                self._fail(exc)
            finally:
                self._future_resolved()

        future.add_done_callback(resolved)

    def _finish(self, unit: U, worker: str, result: R) -> None:
        try:
            self._scheduler._judge(result, unit, self._halt)
            for observer in self._scheduler.observers:
                observer.unit_finished(result)
        except BaseException as exc:  # raised by wait(): the reporting thread may drop it
            self._fail(exc)
            raise
        finally:  # the slot and the result are never lost, even to a broken observer
            self._record(unit, result)
            self.release(worker)  # after the halt decision, so the next unit sees it

    def _record(self, unit: U, result: R) -> None:
        with self._changed:
            self._results[unit.name] = result
            self._changed.notify_all()

    def _future_resolved(self) -> None:
        with self._changed:
            self._pending_futures -= 1
            self._changed.notify_all()


class _Once(Generic[R]):
    """Passes on only the first result reported for a unit (its worker's, or its future's)."""

    def __init__(self, target: Callable[[R], None]) -> None:
        self._target = target
        self._lock = threading.Lock()
        self.called = False

    def __call__(self, result: R) -> None:
        with self._lock:
            if self.called:
                return
            self.called = True
        self._target(result)
