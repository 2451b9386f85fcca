"""Processes that leave their command's process group, ended when their run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.commands import RunStop, run_command
from flows.leftovers import MARKER_VAR, end_leftovers, find_leftovers, new_marker
from tests.conftest import escape_command, process_running, wait_for_file, wait_until_gone

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


def test_a_process_that_left_its_group_is_ended_with_its_run(tmp_path: Path) -> None:
    stop, other_run = RunStop(), RunStop()
    escaped, bystander = tmp_path / "escaped.pid", tmp_path / "bystander.pid"
    for run, pid_file in ((stop, escaped), (other_run, bystander)):
        outcome = run_command(escape_command(pid_file), cwd=tmp_path, env=os.environ,
                              timeout=10, log_path=tmp_path / "log", stop=run)  # fmt: skip
        assert outcome.ok
    pid, other = int(wait_for_file(escaped)), int(wait_for_file(bystander))
    try:
        assert process_running(pid), "the command's group kill got it: nothing left to test"

        ended = stop.end_leftovers()

        assert [leftover.pid for leftover in ended] == [pid]
        assert "sleep 300" in ended[0].command
        assert wait_until_gone(pid)
        assert process_running(other), "another run's process was ended"
    finally:
        other_run.end_leftovers()
    assert wait_until_gone(other)


def test_a_leftover_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    marker = new_marker()
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(300)")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, MARKER_VAR: marker})  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        started = time.monotonic()

        ended = end_leftovers(marker, grace=0.5)

        assert [leftover.pid for leftover in ended] == [child.pid]
        assert child.wait(5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        child.kill()
        child.wait()


def test_only_the_exact_marker_is_found() -> None:
    marker = new_marker()
    lookalikes = [f"{marker}x", marker[:-1], ""]
    children = [subprocess.Popen(["sleep", "300"], env={**os.environ, MARKER_VAR: value})
                for value in lookalikes]  # fmt: skip
    children.append(subprocess.Popen(["sleep", "300"], env={**os.environ, "OTHER": marker}))
    try:
        assert find_leftovers(marker) == []
        assert end_leftovers(marker) == []
        assert all(child.poll() is None for child in children)
    finally:
        for child in children:
            child.kill()
            child.wait()
