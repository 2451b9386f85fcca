"""Issue processes: issues resolved in child processes, heartbeats relayed, a dead child
failing only the issues it held, and how many a run starts."""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flows.fleet.config import FleetConfig
from flows.fleet.connection import open_connection
from flows.fleet.flow import process_count
from flows.fleet.processes import (
    LEADER_GONE_EXIT,
    IssueProcessError,
    IssueProcesses,
    ProcessSpec,
)
from flows.fleet.worker import IssueUnit
from flows.fleet.workspace import Mirror


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
    spec = ProcessSpec(connection.settings, None, tmp_path / "report", "tests:1")
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
    spec, units = seeded_testbed(tmp_path, 2, workers=2, agent_seconds=3)
    beats = Beats()
    with IssueProcesses(spec, beats) as processes:
        processes.start(2)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(processes.resolve, units[0], "w1")  # both idle: the first child
            beats.wait_for(f"{units[0].name}: agent")
            os.kill(processes.pids[0], signal.SIGKILL)
            with pytest.raises(IssueProcessError, match=r"exited with code -9"):
                held.result(timeout=30)
        result = processes.resolve(units[1], "w2")  # the live child takes it
    assert result.status == "succeeded", result.log_tail


def test_children_exit_when_their_leader_is_gone(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1, agent_seconds=60)
    beats = Beats()
    with IssueProcesses(spec, beats) as processes:
        processes.start(1)
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(processes.resolve, units[0], "w1")
            beats.wait_for(f"{units[0].name}: agent")
            processes._children[0]._outbox.close()  # as a dying leader's pipe closes
            with pytest.raises(IssueProcessError, match=f"exited with code {LEADER_GONE_EXIT}"):
                held.result(timeout=20)  # at once, not after the agent's 60 s


def test_a_child_that_cannot_build_its_clients_fails_its_issues_clearly(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1)
    broken = ProcessSpec(spec.settings.model_copy(update={"model": "no-such-model"}), None,
                         spec.report_dir, spec.claimant)  # fmt: skip
    with IssueProcesses(broken, Beats()) as processes:
        processes.start(1)
        with pytest.raises(IssueProcessError, match=r"could not start: ConfigError.*no-such-model"):
            processes.resolve(units[0], "w1")
        with pytest.raises(IssueProcessError, match="every issue process has exited"):
            processes.resolve(units[0], "w1")


def test_resolve_before_start_is_an_error(tmp_path: Path) -> None:
    spec, units = seeded_testbed(tmp_path, 1)
    with IssueProcesses(spec, Beats()) as processes, pytest.raises(IssueProcessError):
        processes.resolve(units[0], "w1")


@pytest.mark.parametrize(
    ("settings", "issues", "expected"),
    [
        ({"workers": 50}, 1000, min(os.cpu_count() or 1, 50)),
        ({"workers": 50}, 99, 0),  # too few issues to pay for the children's start
        ({"workers": 7}, 1000, 0),  # few workers: little contention for the leader's GIL
        ({"workers": 50, "processes": 0}, 1000, 0),
        ({"workers": 4, "processes": 3}, 10, 3),
        ({"workers": 4, "processes": 8}, 10, 4),  # never more than workers
        ({"workers": 4, "processes": 3}, 2, 2),  # nor than issues
    ],
)
def test_process_count(settings: dict[str, int], issues: int, expected: int) -> None:
    assert process_count(FleetConfig(**settings), issues) == expected  # type: ignore[arg-type]
