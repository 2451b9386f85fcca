"""file_lock: exclusive between threads of one process as between processes; shared
holders coexist; a non-blocking try says whether it got the lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flows.locks import file_lock

HOLDS_IT = """
import sys, time
from pathlib import Path
from flows.locks import file_lock
with file_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_held_lock_is_refused_to_a_non_blocking_try(tmp_path: Path) -> None:
    lock = tmp_path / "a.lock"
    with file_lock(lock) as held:
        assert held
        with file_lock(lock, blocking=False) as again:  # another thread's call, as here
            assert not again
    with file_lock(lock, blocking=False) as free:
        assert free


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path: Path) -> None:
    lock = tmp_path / "b.lock"
    with file_lock(lock, shared=True), file_lock(lock, shared=True, blocking=False) as both:
        assert both
        with file_lock(lock, blocking=False) as exclusive:
            assert not exclusive


def test_another_process_holding_it_excludes_this_one(tmp_path: Path) -> None:
    lock = tmp_path / "c.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDS_IT, str(lock)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with file_lock(lock, blocking=False) as got:
            assert not got
    finally:
        holder.kill()
        holder.wait()
    with file_lock(lock, blocking=False) as got:
        assert got
