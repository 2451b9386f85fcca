"""Peak resident memory of running commands, per process group.

`ru_maxrss` from wait4 cannot be used: Linux records the parent's memory high-water mark
at the child's exec, so every command would report at least the leader's own size. One
sampler thread instead reads /proc once per tick and sums RSS by process group (each
command runs in its own session, so its group is its whole process tree, grandchildren
included). Short spikes between ticks can be missed; the value is a lower bound.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)


def group_rss_mb(proc: Path = Path("/proc")) -> dict[int, float]:
    """Current RSS in MiB of every process group on the machine."""
    totals: dict[int, float] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rfind(b")") + 2 :].split()
        pgrp, rss_pages = int(fields[2]), int(fields[21])
        totals[pgrp] = totals.get(pgrp, 0.0) + rss_pages * PAGE_MB
    return totals


class RssSampler:
    """Tracks the peak RSS of watched process groups while any is being watched."""

    def __init__(self, interval: float = 0.2) -> None:
        self._interval = interval
        self._peaks: dict[int, float] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def watch(self, pgid: int) -> None:
        with self._lock:
            self._peaks[pgid] = 0.0
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
                self._thread.start()
            elif len(self._peaks) == 1:
                self._wake.notify()  # it was idle; otherwise it samples on its own schedule

    def release(self, pgid: int) -> float:
        """Stop watching a group; its peak RSS in MiB."""
        with self._lock:
            return round(self._peaks.pop(pgid, 0.0), 1)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._peaks:
                    self._wake.wait()
            sample = group_rss_mb()
            with self._lock:
                for pgid in self._peaks:
                    self._peaks[pgid] = max(self._peaks[pgid], sample.get(pgid, 0.0))
                self._wake.wait(self._interval)
