"""Processes that leave their command's process group, ended when their scope ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.commands import run_command
from flows.leftovers import (
    MARKER_VAR,
    end_leftovers,
    find_leftovers,
    last_pid,
    marked,
    new_marker,
)
from tests.conftest import escape_command, process_running, wait_for_file, wait_until_gone

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


def started(*argv: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A process, once its environment can be read: for a moment after `execve` returns
    to the parent, the kernel has not told /proc where the new one lies yet."""
    process = subprocess.Popen(list(argv), env=env)
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{process.pid}/environ").read_bytes():
        assert time.monotonic() < deadline, "its environment never became readable"
        time.sleep(0.001)
    return process


def test_a_process_that_left_its_group_is_ended_with_its_marker(tmp_path: Path) -> None:
    mine, other = new_marker(), new_marker()
    escaped, bystander = tmp_path / "escaped.pid", tmp_path / "bystander.pid"
    for marker, pid_file in ((mine, escaped), (other, bystander)):
        env = marked(os.environ, marker)
        outcome = run_command(escape_command(pid_file), cwd=tmp_path, env=env, timeout=10,
                              log_path=tmp_path / "log")  # fmt: skip
        assert outcome.ok
    pid, other_pid = int(wait_for_file(escaped)), int(wait_for_file(bystander))
    deadline = time.monotonic() + 5
    while not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"):  # exec'd
        assert time.monotonic() < deadline
        time.sleep(0.001)
    try:
        assert process_running(pid), "the command's group kill got it: nothing left to test"

        ended = end_leftovers(mine)

        assert [leftover.pid for leftover in ended] == [pid]
        assert "sleep 300" in ended[0].command
        assert wait_until_gone(pid)
        assert process_running(other_pid), "a process of another marker was ended"
    finally:
        end_leftovers(other)
        for leftover in (pid, other_pid):
            if process_running(leftover):
                os.kill(leftover, signal.SIGKILL)


def test_a_leftover_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    marker = new_marker()
    script = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
              "print('ready', flush=True); time.sleep(300)")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             env=marked(os.environ, marker))  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        started = time.monotonic()

        ended = end_leftovers(marker, grace=0.5)

        assert [leftover.pid for leftover in ended] == [child.pid]  # once, though killed
        assert child.wait(5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5
    finally:
        child.kill()
        child.wait()


def test_the_group_a_leftover_leads_is_ended_with_it(tmp_path: Path) -> None:
    """A daemon's helpers may not carry the marker (they rewrote their environment, say):
    they go with the group their marked leader leads."""
    marker, helper_file = new_marker(), tmp_path / "helper.pid"
    script = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"env = {{k: v for k, v in os.environ.items() if k != {MARKER_VAR!r}}}\n"
        "helper = subprocess.Popen(['sleep', '300'], env=env)\n"
        f"open({str(helper_file)!r}, 'w').write(str(helper.pid))\n"
        "time.sleep(300)\n"
    )
    leader = subprocess.Popen([sys.executable, "-c", script], env=marked(os.environ, marker),
                              start_new_session=True)  # fmt: skip
    try:
        helper = int(wait_for_file(helper_file))
        assert [leftover.pid for leftover in find_leftovers(marker)] == [leader.pid]

        end_leftovers(marker, grace=0.3)

        assert leader.wait(5) == -signal.SIGKILL
        assert wait_until_gone(helper)
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_markers_nest_and_only_the_exact_marker_is_found() -> None:
    outer, inner = new_marker(), new_marker()
    nested = started("sleep", "300", env=marked(marked(os.environ, outer), inner))
    lookalikes = [subprocess.Popen(["sleep", "300"], env={**os.environ, MARKER_VAR: value})
                  for value in (f"{inner}x", inner[:-1], f"{inner};{outer}")]  # fmt: skip
    elsewhere = subprocess.Popen(["sleep", "300"], env={**os.environ, "OTHER": inner})
    try:
        assert [leftover.pid for leftover in find_leftovers(inner)] == [nested.pid]
        assert [leftover.pid for leftover in find_leftovers(outer)] == [nested.pid]
        assert [leftover.pid for leftover in end_leftovers(outer)] == [nested.pid]
        assert nested.wait(5) == -signal.SIGTERM
        assert all(child.poll() is None for child in [*lookalikes, elsewhere])
    finally:
        for child in [nested, *lookalikes, elsewhere]:
            child.kill()
            child.wait()


def test_only_processes_started_since_are_read() -> None:
    """`since` (the last process id given out when the scope began) skips the processes
    that were already running: none of them can carry a marker made after they started."""
    marker = new_marker()
    before = started("sleep", "300", env=marked(os.environ, marker))
    since = last_pid()
    after = started("sleep", "300", env=marked(os.environ, marker))
    try:
        assert since is not None
        assert [leftover.pid for leftover in find_leftovers(marker, since)] == [after.pid]
        assert {leftover.pid for leftover in find_leftovers(marker)} == {before.pid, after.pid}
    finally:
        for child in (before, after):
            child.kill()
            child.wait()
