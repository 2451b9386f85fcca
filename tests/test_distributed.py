"""Distributed mode on a real cluster: a Prefect server on PostgreSQL, a process work pool,
three `prefect worker start` processes, the deployments of prefect.yaml, and the issue
poller over mock issues (simulated agents, real git objects)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from benchmarks.common import POOL, postgres_database, prepare_server
from flows._prefect import local_server
from flows.fleet import testbed
from flows.fleet.dispatch import RESOLVE_DEPLOYMENT, dispatch, source_tag
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.testbed import ensure_remote, ensure_tracker
from flows.fleet.tracker import Labels
from flows.fleet.worker import CANCELLED, failure_comment
from tests.conftest import REPO, run_cli

CRASH_AFTER = 60  # seconds without a heartbeat (runs beat every 30 s; the minimum)


@dataclass
class Cluster:
    api_url: str
    env: dict[str, str]
    workers: dict[str, subprocess.Popen[bytes]]
    logs: Path

    def client(self) -> SyncPrefectClient:
        return get_client(sync_client=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("cluster-home")
    with (
        # a name of its own: another run of these tests on this PostgreSQL drops its database
        postgres_database(f"ppa_test_{os.getpid()}_{uuid.uuid4().hex[:8]}") as database_url,
        local_server(home=home, startup_timeout=180, database_url=database_url) as url,
    ):
        env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PYTHONPATH": str(REPO),
        }
        prepare_server(env, 3, crash_after=CRASH_AFTER)
        workers = {
            name: start_worker(name, env, home) for name in ("worker-1", "worker-2", "worker-3")
        }
        try:
            with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
                yield Cluster(f"{url}/api", env, workers, home)
        finally:
            for process in workers.values():
                kill_group(process)


def start_worker(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    with (logs / f"{name}.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--name", name],
            cwd=REPO, env={**env, "WORKER_ID": name}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the runs it starts die with it
        )  # fmt: skip


def kill_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def resolve_runs(client: SyncPrefectClient, workspace: Path) -> list[FlowRun]:
    """The resolve-issue runs of one test's testbed."""
    deployment = client.read_deployment_by_name(RESOLVE_DEPLOYMENT)
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
            tags=FlowRunFilterTags(all_=[source_tag(testbed.testbed_source(workspace))]),
        )
    )


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def all_final(client: SyncPrefectClient, workspace: Path, expected: int) -> list[FlowRun] | None:
    runs = resolve_runs(client, workspace)
    if len(runs) >= expected and all(r.state and r.state.is_final() for r in runs):
        return runs
    return None


def poll(workspace: Path, **overrides: Any) -> FlowRun:
    """One run of the issue-poller deployment, on the pool, until it finishes."""
    settings = {"workspace": str(workspace), "mock_issues": 0, "failure_rate": 0.0, **overrides}
    run = run_deployment(
        "issue-poller/issue-poller", parameters={"overrides": settings}, timeout=180
    )
    assert isinstance(run, FlowRun)
    assert run.state is not None and run.state.is_completed(), run.state
    return run


def worker_of(workspace: Path, number: int) -> str:
    report = json.loads((workspace / ".fleet" / "report" / f"issue-{number}" / "report.json")
                        .read_text())  # fmt: skip
    return str(report["tasks"][0]["worker"])


def test_poller_resolves_each_issue_once_across_workers(cluster: Cluster, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    ensure_remote(workspace)
    tracker = ensure_tracker(workspace, 12, Labels())

    poll(workspace, agent_seconds=1)
    poll(workspace, agent_seconds=1)  # a second poll while runs are pending: nothing new
    with cluster.client() as client:
        runs = wait_for(lambda: all_final(client, workspace, 12), 300, "12 resolve-issue runs")
        assert len(runs) == 12, [r.name for r in runs]
        assert all(r.state_type == StateType.COMPLETED for r in runs), [
            (r.name, r.state_name) for r in runs
        ]
        numbers = sorted(r.parameters["issue_number"] for r in runs)
        assert numbers == list(range(1, 13))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])
            )
        )
        reports = [a for a in artifacts if a.key and a.key.endswith("-report")]
        assert len(reports) == 12
        assert all("issue-" in str(a.data) for a in reports)

    pulls = tracker.pulls()
    assert sorted(p.branch for p in pulls) == sorted(f"ai-feature/issue-{n}" for n in numbers)
    assert all("ai-review" in tracker.labels_of(n) for n in numbers)
    assert len({worker_of(workspace, n) for n in numbers}) >= 2  # spread over the pool


def test_overlapping_dispatch_starts_one_run_per_issue(cluster: Cluster, tmp_path: Path) -> None:
    """Two pollers dispatching the same issues at the same moment (the idempotency key)."""
    workspace = tmp_path / "ws"
    tracker = ensure_tracker(workspace, 4, Labels())
    issues = tracker.list_ready()
    barrier = threading.Barrier(2)
    started: list[UUID] = []

    def poller() -> None:
        with cluster.client() as client:
            deployment = client.read_deployment_by_name(RESOLVE_DEPLOYMENT)
            barrier.wait()
            for issue in issues:
                parameters = {"overrides": {"workspace": str(workspace), "agent_seconds": 0.1}}
                started.append(
                    dispatch(client, deployment.id, "overlap-test", issue, parameters).flow_run_id
                )

    # copied contexts: the threads must see this test's PREFECT_API_URL
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(poller,))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(started) == 8 and len(set(started)) == 4  # both pollers got the same 4 runs


def test_killed_worker_crashes_its_run_and_the_issue_is_redone(
    cluster: Cluster, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    ensure_remote(workspace)
    tracker: LocalTracker = ensure_tracker(workspace, 1, Labels())
    (issue,) = tracker.list_ready()
    poll(workspace, agent_seconds=120)  # long enough to be killed in the middle

    with cluster.client() as client:
        run = wait_for(
            lambda: running_for(client, workspace, issue.number, 5), 120, "the run to start"
        )
        victim = worker_running(cluster, run)
        kill_tree(cluster.workers[victim])  # the worker and the run it started
        crashed = wait_for(
            lambda: state_of(client, run.id, StateType.CRASHED), CRASH_AFTER + 90, "Crashed"
        )
        assert "heartbeat" in (crashed.state.message or "")
        assert "in-progress" in tracker.labels_of(issue.number)

        poll(workspace, agent_seconds=1)  # releases the lost issue and dispatches it again
        runs = wait_for(
            lambda: all_final_for(client, workspace, issue.number, 2), 180, "the second run"
        )

    assert [r.state_type for r in runs] == [StateType.CRASHED, StateType.COMPLETED]
    assert worker_of(workspace, issue.number) != victim
    assert "ai-review" in tracker.labels_of(issue.number)
    assert [p.branch for p in tracker.pulls()] == [issue.branch]  # one pull request
    assert any(c.startswith("Released: run") for c in tracker.comments(issue.number))
    cluster.workers[victim] = start_worker(victim, cluster.env, cluster.logs)


def test_a_cancelled_run_stops_its_agent_and_fails_its_issue(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Cancelled in the UI: the run's agent stops at once, and the issue is
    failed with a comment, neither left in progress nor queued for the next poll."""
    workspace = tmp_path / "ws"
    ensure_remote(workspace)
    tracker: LocalTracker = ensure_tracker(workspace, 1, Labels())
    (issue,) = tracker.list_ready()
    poll(workspace, agent_seconds=20)  # two turns of 10 s

    with cluster.client() as client:
        run = wait_for(
            lambda: running_for(client, workspace, issue.number, 2), 120, "the run to start"
        )
        client.set_flow_run_state(run.id, Cancelling())
        wait_for(lambda: state_of(client, run.id, StateType.CANCELLED), 90, "Cancelled")

    labels = tracker.labels_of(issue.number)
    assert "ai-failed" in labels and "in-progress" not in labels and "ready-for-dev" not in labels
    assert tracker.comments(issue.number)[-1] == failure_comment(CANCELLED)
    assert not tracker.pulls()


def runs_for(client: SyncPrefectClient, workspace: Path, number: int) -> list[FlowRun]:
    runs = resolve_runs(client, workspace)
    found = [r for r in runs if r.parameters.get("issue_number") == number]
    return sorted(found, key=lambda r: r.created or 0)


def running_for(
    client: SyncPrefectClient, workspace: Path, number: int, seconds: float
) -> FlowRun | None:
    for run in runs_for(client, workspace, number):
        if run.state_type == StateType.RUNNING and run.start_time is not None:
            started = run.start_time.timestamp()
            if time.time() - started >= seconds:
                return run
    return None


def state_of(client: SyncPrefectClient, run_id: UUID, wanted: StateType) -> FlowRun | None:
    run = client.read_flow_run(run_id)
    return run if run.state_type == wanted else None


def all_final_for(
    client: SyncPrefectClient, workspace: Path, number: int, count: int
) -> list[FlowRun] | None:
    runs = runs_for(client, workspace, number)
    if len(runs) >= count and all(r.state and r.state.is_final() for r in runs):
        return runs
    return None


def worker_running(cluster: Cluster, run: FlowRun) -> str:
    """The worker whose process started the run's process (infrastructure_pid host:pid)."""
    pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
    ancestors = {parent.pid for parent in psutil.Process(pid).parents()}
    for name, process in cluster.workers.items():
        if process.pid in ancestors:
            return name
    raise AssertionError(f"no worker started process {pid}")


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker and every process under it, as if its machine died."""
    for child in psutil.Process(process.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    kill_group(process)


def test_cli_distributed_mode_waits_for_the_pool(cluster: Cluster, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    result = run_cli(["fleet", "--mode", "distributed", "--simulate", "--mock-issues", "3",
                      "--agent-seconds", "0.5", "--failure-rate", "0",
                      "--workspace", str(workspace)], cluster.env)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((workspace / ".fleet" / "report" / "report.json").read_text())
    assert report["summary"]["succeeded"] == 3
    assert all(t["pull_request"] and t["worker"].startswith("worker-") for t in report["tasks"])


def test_cli_distributed_mode_without_a_server_is_bad_input(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api", "PYTHONPATH": str(REPO)}
    result = run_cli(["fleet", "--mode", "distributed", "--simulate"], env)
    assert result.returncode == 2
    assert "PREFECT_API_URL" in result.stderr and "no Prefect server answers" in result.stderr
    assert "Traceback" not in result.stderr
