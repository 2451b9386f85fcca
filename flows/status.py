"""Live worker status in the terminal: a table redrawn in place on a TTY, one line per
finished unit otherwise (logs, CI)."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from flows._prefect import flow_run_url
from flows.report import STATUS_ICONS, UnitResult
from flows.scheduler import WorkUnit


@dataclass
class WorkerState:
    name: str
    status: str = "idle"
    current: str = ""
    completed: int = 0
    failed: int = 0
    cost_usd: float = 0.0  # of finished units
    current_cost_usd: float = 0.0  # of the unit in progress, so far
    started: float = 0.0
    last_heartbeat: float = 0.0


class StatusBoard:
    """A scheduler observer that shows what every worker slot is doing."""

    def __init__(self, title: str, stream: TextIO | None = None, live: bool | None = None):
        self.title = title
        self._stream = stream or sys.stdout
        self._live_enabled = self._stream.isatty() if live is None else live
        self._workers: dict[str, WorkerState] = {}
        self._running: dict[str, str] = {}  # unit name -> worker
        self._lock = threading.Lock()
        self._live: Live | None = None

    def __enter__(self) -> StatusBoard:
        if self._live_enabled:
            console = Console(file=self._stream)
            self._live = Live(self.table(), console=console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(None, None, None)

    def run_started(self, flow_run_id: str | None) -> None:
        url = flow_run_url(flow_run_id)
        if url:
            message = f"Prefect UI for this run: {url}"
            if self._live is not None:
                self._live.console.print(message)
            else:
                print(message, file=self._stream, flush=True)

    def unit_started(self, unit: WorkUnit, worker: str) -> None:
        now = time.monotonic()
        with self._lock:
            state = self._workers.setdefault(worker, WorkerState(worker, started=now))
            state.status, state.current, state.last_heartbeat = "working", unit.name, now
            state.current_cost_usd = 0.0
            self._running[unit.name] = worker
        self._refresh()

    def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
        with self._lock:
            state = self._workers.get(worker)
            if state is None or state.status != "working":
                return
            state.current, state.current_cost_usd = activity, cost_usd
            state.last_heartbeat = time.monotonic()
        self._refresh()

    def unit_finished(self, result: UnitResult) -> None:
        with self._lock:
            worker = self._running.pop(result.name, None)
            if worker is not None:
                state = self._workers[worker]
                state.status, state.current, state.current_cost_usd = "idle", "", 0.0
                state.last_heartbeat = time.monotonic()
                state.completed += result.status == "succeeded"
                state.failed += result.failed
                state.cost_usd += float(getattr(result, "cost_usd", 0.0) or 0.0)
        if not self._live_enabled:
            self._print_line(result)
        self._refresh()

    def table(self) -> Table:
        now = time.monotonic()
        table = Table(title=f"{self.title} · {time.strftime('%H:%M:%S')}")
        for column in ("worker", "status", "completed", "failed", "cost", "current", "uptime",
                       "heartbeat"):  # fmt: skip
            # narrow terminals: who and what are never cut short; the activity wraps
            table.add_column(column, no_wrap=column in ("worker", "status"),
                             overflow="fold" if column == "current" else "ellipsis")  # fmt: skip
        with self._lock:
            workers = sorted(self._workers.values(), key=lambda w: w.name)
            for w in workers:
                icon = "🔵" if w.status == "working" else "⚪"
                table.add_row(
                    w.name, f"{icon} {w.status}", str(w.completed), str(w.failed),
                    f"${w.cost_usd + w.current_cost_usd:.2f}", w.current,
                    f"{now - w.started:.0f}s",
                    f"{now - w.last_heartbeat:.0f}s ago",
                )  # fmt: skip
        return table

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self.table())

    def _print_line(self, result: UnitResult) -> None:
        icon = STATUS_ICONS[result.status]
        worker = result.worker or "-"
        line = (
            f"  {icon} p{result.priority} {result.name:<24} {result.status:<9} "
            f"{worker:<10} {result.duration_s:7.2f}s"
        )
        if result.attempts > 1:
            line += f"  ({result.attempts} attempts)"
        with self._lock:
            print(line, file=self._stream, flush=True)
