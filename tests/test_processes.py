"""Issue processes: issues resolved in child processes, heartbeats relayed, a dead child
failing only the issues it held, and how many a run starts."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from flows.fleet.config import FleetConfig
from flows.fleet.connection import fleet_context, open_connection
from flows.fleet.flow import _in_an_issue_process, process_count
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.processes import (
    IssueProcessError,
    IssueProcesses,
    NoIssueProcessError,
    ProcessSpec,
)
from flows.fleet.testbed import open_tracker, remote_path
from flows.fleet.worker import IssueUnit
from flows.fleet.workspace import Mirror
from tests.conftest import REPO, wait_for_file, wait_until_gone


class Beats:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, float]] = []
        self.changed = threading.Condition()

    def __call__(self, worker: str, activity: str, cost_usd: float) -> None:
        with self.changed:
            self.seen.append((worker, activity, cost_usd))
            self.changed.notify_all()

    def wait_for(self, activity: str, timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(
                lambda: any(a.endswith(activity) for _, a, _ in self.seen), timeout
            ), self.seen


def seeded_testbed(
    tmp_path: Path, issues: int, **settings: object
) -> tuple[ProcessSpec, list[IssueUnit]]:
    """A seeded testbed with its mirror, and the spec of a run on it."""
    config = FleetConfig(mode="test", workspace=str(tmp_path / "ws"), mock_issues=issues,
                         **settings)  # type: ignore[arg-type]  # fmt: skip
    connection = open_connection(config, None)
    Mirror(Path(config.workspace).resolve(), connection.clone_url).ensure()
    units = [IssueUnit(issue, 1) for issue in connection.tracker.list_ready()]
    spec = ProcessSpec(connection.settings, None, tmp_path / "report", "tests:1", logging.NOTSET)
    return spec, units


def test_issues_are_resolved_in_children_with_their_heartbeats_relayed(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 4, workers=4, agent_seconds=0.05)
    beats = Beats()
    with IssueProcesses(spec, beats) as processes:
        processes.start(2)
        pids = processes.pids
        assert len(pids) == 2 and os.getpid() not in pids
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(processes.resolve, units, [f"w{i}" for i in range(4)]))
    assert [r.status for r in results] == ["succeeded"] * 4
    assert all(r.pull_request and r.pull_request.startswith("local://pulls/") for r in results)
    for result in results:
        mine = [a for w, a, _ in beats.seen if w == result.worker]
        assert mine[0] == f"{result.name}: claim" and mine[-1] == f"{result.name}: cleanup"
    for pid in pids:  # closing waited for the children to exit
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_dead_child_fails_only_its_issues_and_is_not_given_more(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 3, workers=3, agent_seconds=3)
    beats = Beats()
    with IssueProcesses(spec, beats) as processes:
        processes.start(2)
        with ThreadPoolExecutor(2) as pool:
            doomed = pool.submit(processes.resolve, units[0], "w1")  # both idle: the first
            beats.wait_for(f"{units[0].name}: agent")
            spared = pool.submit(processes.resolve, units[1], "w2")  # the less busy: second
            beats.wait_for(f"{units[1].name}: agent")
            os.kill(processes.pids[0], signal.SIGKILL)
            with pytest.raises(IssueProcessError, match=r"exited with code -9"):
                doomed.result(timeout=30)
            assert spared.result(timeout=60).status == "succeeded"
        after = processes.resolve(units[2], "w3")  # the live child takes it
    assert after.status == "succeeded", after.log_tail


def test_a_stop_reaches_the_issues_in_the_children(tmp_path: Path) -> None:
    """An interrupted run stops the agents of its issue processes too: their issues end
    before the agent's next turn and go back to the queue."""
    spec, units = seeded_testbed(tmp_path, 2, workers=2, agent_seconds=4)
    beats = Beats()
    with IssueProcesses(spec, beats) as processes:
        processes.start(2)
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(processes.resolve, unit, f"w{i}")
                       for i, unit in enumerate(units)]  # fmt: skip
            for unit in units:
                beats.wait_for(f"{unit.name}: agent")
            processes.stop("interrupted (SIGTERM)")
            results = [future.result(timeout=30) for future in futures]
    assert [r.status for r in results] == ["skipped", "skipped"]  # back in the queue
    assert all("stopped: interrupted (SIGTERM)" in r.log_tail for r in results)
    assert all(r.stages.get("agent", 99) < 4 for r in results)  # before its second turn
    tracker = open_tracker(Path(spec.settings.workspace), spec.settings.labels)
    assert all("ready-for-dev" in tracker.get(u.issue.number).labels for u in units)


def test_an_issue_that_raises_in_a_child_fails_with_what_it_raised(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1)
    spec.report_dir.write_text("a file where the issue logs' folder should be")
    with IssueProcesses(spec, Beats()) as processes:
        processes.start(1)
        with pytest.raises(IssueProcessError, match=r"(FileExists|NotADirectory)Error"):
            processes.resolve(units[0], "w1")
        spec.report_dir.unlink()
        assert processes.resolve(units[0], "w1").status == "succeeded"  # the child lives on


def hang_the_checks(spec: ProcessSpec, pid_file: Path) -> None:
    """Make the testbed repository's check a command that writes its pid and hangs."""
    workspace = Path(spec.settings.workspace).resolve()
    clone = workspace.parent / "checks-edit"
    git = partial(subprocess.run, check=True, capture_output=True, timeout=60)
    git(["git", "clone", "-q", str(remote_path(workspace)), str(clone)])
    (clone / ".multi-agent.yml").write_text(
        f"name: checks\ntasks:\n  - name: hangs\n    priority: 1\n"
        f"    run: echo $$ > {pid_file}; exec sleep 300\n"
    )
    git(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qam", "hang"],
        cwd=clone)  # fmt: skip
    git(["git", "push", "-q", "origin", "HEAD"], cwd=clone)
    Mirror(workspace, str(remote_path(workspace))).ensure()


LEADER = """
import sys, time
from pathlib import Path
from tests.test_processes import Beats, hang_the_checks, seeded_testbed
from flows.fleet.processes import IssueProcesses
from concurrent.futures import ThreadPoolExecutor
base, stage = Path(sys.argv[1]), sys.argv[2]
spec, units = seeded_testbed(base, 1, agent_seconds=60 if stage == "agent" else 0.1)
if stage == "checks":
    hang_the_checks(spec, base / "check.pid")
beats = Beats()
processes = IssueProcesses(spec, beats)
processes.start(1)
ThreadPoolExecutor(1).submit(processes.resolve, units[0], "w1")
beats.wait_for(stage)
print(processes.pids[0], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("stage", ["agent", "checks"])
def test_children_and_their_commands_exit_when_their_leader_dies(
    tmp_path: Path, stage: str
) -> None:
    """SIGKILLed, the leader cannot stop its issue processes: they see its pipe close and
    exit, killing the commands their issues run (a check hanging for 300 s, here), which
    would otherwise live on, with no timeout left to end them."""
    leader = subprocess.Popen([sys.executable, "-c", LEADER, str(tmp_path), stage],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    try:
        assert leader.stdout is not None
        child = int(leader.stdout.readline())  # its issue's agent (60 s) or check is at work
        doomed = [child]
        if stage == "checks":
            wait_for_file(tmp_path / "check.pid")
            doomed.append(int((tmp_path / "check.pid").read_text()))
        leader.kill()
        leader.wait()
        assert all(wait_until_gone(pid, timeout=20) for pid in doomed)
    finally:
        leader.kill()
        leader.wait()
        if (tmp_path / "check.pid").is_file():  # the test's own leftover, if it failed
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int((tmp_path / "check.pid").read_text()), signal.SIGKILL)


def unbuildable(spec: ProcessSpec) -> ProcessSpec:
    """`spec` with a model no price table knows: a child cannot build its clients from it."""
    settings = spec.settings.model_copy(update={"model": "no-such-model"})
    return dataclasses.replace(spec, settings=settings)


def test_a_child_that_cannot_build_its_clients_fails_its_issues_clearly(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1)
    broken = unbuildable(spec)
    with IssueProcesses(broken, Beats()) as processes:
        processes.start(1)
        # not taken: NoIssueProcessError, so that it may run elsewhere
        with pytest.raises(NoIssueProcessError, match=r"could not start: ConfigError.*no-such"):
            processes.resolve(units[0], "w1")
        with pytest.raises(IssueProcessError, match="no issue process takes issues"):
            processes.resolve(units[0], "w1")


def test_issues_run_in_the_leader_when_no_child_takes_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, units = seeded_testbed(tmp_path, 1, agent_seconds=0)
    broken = unbuildable(spec)
    connection = open_connection(spec.settings, None, seed=False)
    ctx = fleet_context(connection, spec.report_dir, spec.claimant, Beats())
    with IssueProcesses(broken, Beats()) as processes:
        processes.start(1)
        while processes.accepting:
            time.sleep(0.05)  # until the child has said why it cannot start
        result = _in_an_issue_process(processes, ctx, None, units[0], "worker-01")
    assert result.status == "succeeded" and result.worker == "worker-01"
    assert f"{units[0].name} runs in the leader: no issue process takes issues" in caplog.text


def test_issues_sent_before_a_child_says_it_cannot_start_run_in_the_leader(
    tmp_path: Path,
) -> None:
    """The first wave goes out while the children are still starting: a child that then
    fails to build its clients never took those issues, and they must not fail."""
    spec, units = seeded_testbed(tmp_path, 2, agent_seconds=0)
    connection = open_connection(spec.settings, None, seed=False)
    ctx = fleet_context(connection, spec.report_dir, spec.claimant, Beats())
    with IssueProcesses(unbuildable(spec), Beats()) as processes, ThreadPoolExecutor(2) as pool:
        processes.start(1)
        slots = ["worker-01", "worker-02"]
        results = list(pool.map(partial(_in_an_issue_process, processes, ctx, None), units, slots))
    assert [r.status for r in results] == ["succeeded", "succeeded"]


def test_an_issue_whose_child_dies_is_labelled_failed_not_left_in_progress(
    tmp_path: Path,
) -> None:
    spec, units = seeded_testbed(tmp_path, 1, agent_seconds=30)
    connection = open_connection(spec.settings, None, seed=False)
    ctx = fleet_context(connection, spec.report_dir, spec.claimant, Beats())
    beats = Beats()
    with IssueProcesses(spec, beats) as processes, ThreadPoolExecutor(1) as pool:
        processes.start(1)
        doomed = pool.submit(_in_an_issue_process, processes, ctx, None, units[0], "worker-01")
        beats.wait_for(f"{units[0].name}: agent")
        os.kill(processes.pids[0], signal.SIGKILL)
        with pytest.raises(IssueProcessError, match=r"exited with code -9"):
            doomed.result(timeout=30)
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker)
    labels = tracker.labels_of(units[0].issue.number)
    assert "ai-failed" in labels and "in-progress" not in labels
    assert "exited with code -9" in tracker.comments(units[0].issue.number)[-1]


def test_resolve_before_start_is_an_error(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1)
    with IssueProcesses(spec, Beats()) as processes, pytest.raises(IssueProcessError):
        processes.resolve(units[0], "w1")


@pytest.mark.parametrize(
    ("settings", "issues", "expected"),
    [
        ({"workers": 50}, 1000, 8),  # one per core (8 here)
        ({"workers": 9}, 1000, 8),
        ({"workers": 10, "processes": 12}, 1000, 10),  # given: only capped by the workers
        ({"workers": 50}, 99, 0),  # too few issues to pay for the children's start
        ({"workers": 7}, 1000, 0),  # few workers: little contention for the leader's GIL
        ({"workers": 50, "processes": 0}, 1000, 0),
        ({"workers": 4, "processes": 3}, 10, 3),
        ({"workers": 4, "processes": 8}, 10, 4),  # never more than workers
        ({"workers": 4, "processes": 3}, 2, 2),  # nor than issues
    ],
)
def test_process_count(
    settings: dict[str, int], issues: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flows.fleet.flow.os.cpu_count", lambda: 8)
    assert process_count(FleetConfig(**settings), issues) == expected  # type: ignore[arg-type]
