"""The fleet end to end: test mode through the CLI (real git objects against a local bare
repository), and local mode through the real PyGithub and anthropic clients against
loopback stand-ins of GitHub and the Messages API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, get_client
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from flows._prefect import leader_session, state_result
from flows.fleet.flow import fleet, flow_run_cancelled
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.tracker import Labels
from flows.leader import observing
from flows.report import Report
from tests.conftest import REPO, escape_command, gone_or_killed, run_cli
from tests.fakes.anthropic_api import FakeAnthropic, text_turn, tool_turn
from tests.fakes.github_api import FakeGitHub

pytestmark = pytest.mark.usefixtures("prefect_server")


def fleet_args(workspace: Path, *extra: str) -> list[str]:
    return ["fleet", "--mode", "test", "--workspace", str(workspace), "--agent-seconds", "0.2",
            *extra]  # fmt: skip


def remote_branches(workspace: Path) -> set[str]:
    remote = workspace / ".testbed" / "remote.git"
    out = subprocess.run(
        ["git", "-C", str(remote), "branch", "--format=%(refname:short)"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return set(out.split())


def tracker(workspace: Path) -> LocalTracker:
    return LocalTracker(workspace / ".testbed" / "tracker.json", Labels())


def test_mode_resolves_every_issue_with_a_pull_request(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    result = run_cli(fleet_args(workspace, "--workers", "3", "--mock-issues", "5"), cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((workspace / ".fleet" / "report" / "report.json").read_text())
    assert report["kind"] == "fleet" and report["summary"]["succeeded"] == 5
    assert report["summary"]["cost_usd"] > 0
    markdown = (workspace / ".fleet" / "report" / "report.md").read_text()
    assert "## Tier 2: normal" in markdown  # issues without a priority label are normal
    tasks = report["tasks"]
    assert {t["issue"] for t in tasks} == {1, 2, 3, 4, 5}
    assert all(t["pull_request"].startswith("local://pulls/") for t in tasks)
    assert all(t["branch"] == f"ai-feature/issue-{t['issue']}" and t["cost_usd"] > 0 for t in tasks)
    assert remote_branches(workspace) == {"main"} | {f"ai-feature/issue-{n}" for n in range(1, 6)}
    store = tracker(workspace)
    assert len(store.pulls()) == 5
    assert all("ai-review" in store.labels_of(n) for n in range(1, 6))
    assert all("Closes #" in pull.body and "## Cost" in pull.body for pull in store.pulls())
    # workspace isolation: one folder per worker and issue, cleaned after success
    assert not list(workspace.glob("worker-*/issue-*"))
    assert {t["worker"] for t in tasks} <= {"worker-01", "worker-02", "worker-03"}


def test_mock_issues_from_a_file_are_resolved_once(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """Issues read from a file (a hostile title among them) are added once: a second run
    finds them there and adds none."""
    issues = tmp_path / "issues.yml"
    hostile = "Fix `rm -rf /`; $(reboot) in ../../etc — ünïcödé"
    issues.write_text(
        f"- title: {json.dumps(hostile)}\n  body: ''\n  labels: [priority:1]\n"
        "- title: Add a health endpoint\n  body: GET /health answers 200.\n"
    )
    workspace = tmp_path / "ws"
    args = fleet_args(workspace, "--mock-issues", "0", "--mock-issues-file", str(issues))
    first = run_cli(args, cli_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "   mirror: created, " in first.stdout  # its setup step, in the fleet's words
    store = tracker(workspace)
    assert [(i.title, i.number) for i in store.issues()] == [
        (hostile, 1),
        ("Add a health endpoint", 2),
    ]
    assert remote_branches(workspace) == {"main", "ai-feature/issue-1", "ai-feature/issue-2"}
    report = json.loads((workspace / ".fleet" / "report" / "report.json").read_text())
    assert [(t["issue"], t["priority"]) for t in report["tasks"]] == [(1, 1), (2, 2)]
    second = run_cli(args, cli_env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert len(store.issues()) == 2 and len(store.pulls()) == 2


def test_monitoring_polls_again_and_names_each_polls_report(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    # The duration only has to outlast the first poll (the second follows at once, as the
    # first had issues): 4 s did not always, on a loaded machine.
    args = fleet_args(workspace, "--mock-issues", "2", "--monitor-duration", "10")
    result = run_cli(args, cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    first = workspace / ".fleet" / "report" / "poll-1" / "report.md"
    assert f"report: {first} and report.json" in result.stdout  # where it really is
    polled_again = (first.parent.parent / "poll-2" / "report.json").is_file()
    assert first.is_file() and polled_again, result.stdout


def test_failure_isolation_and_kept_workspaces(tmp_path: Path, cli_env: dict[str, str]) -> None:
    workspace = tmp_path / "ws"
    result = run_cli(
        fleet_args(workspace, "--workers", "2", "--mock-issues", "8", "--failure-rate", "0.5"),
        cli_env,
    )
    assert result.returncode == 1
    report = json.loads((workspace / ".fleet" / "report" / "report.json").read_text())
    failed = [t for t in report["tasks"] if t["status"] == "failed"]
    succeeded = [t for t in report["tasks"] if t["status"] == "succeeded"]
    assert failed and succeeded and len(failed) + len(succeeded) == 8
    store = tracker(workspace)
    for task in failed:
        assert "ai-failed" in store.labels_of(task["issue"])
        assert any("simulated agent failure" in c for c in store.comments(task["issue"]))
        assert task["pull_request"] is None
        assert (workspace / task["worker"] / f"issue-{task['issue']}").is_dir()  # kept
    assert len(store.pulls()) == len(succeeded)


def test_two_overlapping_fleets_never_share_an_issue(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    seed = run_cli(fleet_args(workspace, "--mock-issues", "0"), cli_env)
    assert seed.returncode == 0, seed.stdout + seed.stderr
    store = tracker(workspace)
    for index in range(10):
        store.add_issue(f"Shared issue {index}", "body")
    command = [sys.executable, "-m", "flows.deploy",
               *fleet_args(workspace, "--workers", "3", "--mock-issues", "0")]  # fmt: skip
    fleets = [
        subprocess.Popen([*command, "--report-dir", str(tmp_path / f"r{i}")], cwd=REPO,
                         env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300)[0] for process in fleets]
    assert [process.returncode for process in fleets] == [0, 0], outputs
    handled: list[int] = []
    for i in range(2):
        report = json.loads((tmp_path / f"r{i}" / "report.json").read_text())
        handled += [t["issue"] for t in report["tasks"] if t["status"] == "succeeded"]
    assert sorted(handled) == [issue.number for issue in store.issues()]  # each exactly once
    branches = [pull.branch for pull in store.pulls()]
    assert len(branches) == len(set(branches)) == 10


def test_rerun_after_a_crash_updates_the_existing_pull_request(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    assert run_cli(fleet_args(workspace, "--mock-issues", "1"), cli_env).returncode == 0
    store = tracker(workspace)
    # as if a crashed run had left the issue: ready again, branch and PR already there
    store.release(store.issues()[0], "simulated crash")
    rerun = run_cli(fleet_args(workspace, "--mock-issues", "0"), cli_env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "   mirror: updated, " in rerun.stdout
    assert len(store.pulls()) == 1
    assert remote_branches(workspace) == {"main", "ai-feature/issue-1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "local"], "repo: required in local mode"),
        (["--mode", "local", "--repo", "acme/widgets"], "GITHUB_TOKEN: not set"),
        (["--mode", "local", "--repo", "acme/widgets; rm -rf /"], "--repo: must match"),
        (["--mode", "local", "--repo", "../.."], "--repo: not a repository name"),
        (["--mode", "distributed"], "'resolve-issue/resolve-issue' not found: deploy it first"),
        (["--workers", "0"], "--workers: expected a positive integer"),
        (["--failure-rate", "2"], "--failure-rate: Input should be less than or equal to 1"),
        (["--agent-seconds", "inf"], "--agent-seconds: Input should be a finite number"),
        (["--monitor-duration", "nan"], "--monitor-duration: expected a finite, non-negative"),
        (["--workspace", "/dev/null"], "--workspace: '/dev/null' is not a folder"),
        (["--report-dir", "/dev/null/report"], "--report-dir: '/dev/null' is not a folder"),
        (
            ["--mode", "local", "--repo", "acme/widgets", "--agent-seconds", "3"],
            "--agent-seconds: only for test mode (or distributed --simulate); the mode is local",
        ),
        (
            ["--mode", "local", "--repo", "acme/widgets", "--simulate"],
            "--simulate: only for distributed mode",
        ),
        (["--repo", "acme/widgets"], "--repo: the testbed has its own repository"),
    ],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, cli_env: dict[str, str], args: list[str], message: str
) -> None:
    env = {k: v for k, v in cli_env.items() if k not in ("GITHUB_TOKEN", "ANTHROPIC_API_KEY")}
    result = run_cli(["fleet", "--workspace", str(tmp_path / "ws"), *args], env)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_github_is_one_line_naming_where(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "GITHUB_API_URL": "http://127.0.0.1:9", "GITHUB_TOKEN": "t",
           "ANTHROPIC_API_KEY": "k"}  # fmt: skip
    args = ["fleet", "--workspace", str(tmp_path / "ws"), "--mode", "local", "--repo", "a/b"]
    result = run_cli(args, env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: GitHub at http://127.0.0.1:9: repo: open repository a/b: "
        "GitHub unreachable (ConnectionError)"
    )  # and no line per retry of the client


def bare_repo(path: Path) -> Path:
    seed = path.parent / "seed"
    seed.mkdir(parents=True)
    (seed / "README.md").write_text("# widgets\n")
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
                 ["clone", "-q", "--bare", str(seed), str(path)]):  # fmt: skip
        subprocess.run(["git", *argv], cwd=seed, check=True, capture_output=True)
    return path


@pytest.mark.parametrize("processes", [0, 1], ids=["threads", "issue-process"])
def test_local_mode_through_real_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    remote = bare_repo(tmp_path / "remote.git")
    secret = "ghp_very-secret-token"
    with FakeGitHub(token=secret, owner="acme", repo="widgets", clone_url=str(remote)) as github, \
            FakeAnthropic(api_key="sk-ant-test") as claude:  # fmt: skip
        for label in ("ready-for-dev", "in-progress", "ai-review", "ai-failed"):
            github.add_label(label)
        first = github.add_issue("Add a greeting file", "Please add hello.txt", ["ready-for-dev"])
        github.add_issue("Not ready yet", "", [])
        claude.add(
            tool_turn("write_file", {"path": "hello.txt", "content": "hello\n"}, block_id="tu_1"),
            text_turn("Added hello.txt."),
        )
        monkeypatch.setenv("GITHUB_API_URL", github.base_url)
        monkeypatch.setenv("GITHUB_TOKEN", secret)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
        overrides: dict[str, Any] = {
            "mode": "local", "repo": "acme/widgets", "workers": 1,
            "workspace": str(tmp_path / "ws"), "model": "claude-sonnet-4-6",
            "processes": processes,
        }  # fmt: skip
        with leader_session():
            state = fleet(overrides=overrides, report_dir=str(tmp_path / "report"),
                          return_state=True)  # fmt: skip
        report = state_result(state)
        assert isinstance(report, Report) and report.ok, report
        assert [t.name for t in report.tasks] == [f"issue-{first}"]
        pulls = github.pulls
        assert len(pulls) == 1 and pulls[0]["head"]["ref"] == f"ai-feature/issue-{first}"
        assert f"Closes #{first}" in pulls[0]["body"] and "## Cost" in pulls[0]["body"]
        assert set(github.label_names(first)) == {"ai-review"}
        assert len(claude.requests) == 2
        assert claude.requests[1]["messages"][-1]["content"][0]["tool_use_id"] == "tu_1"
    show = ["git", "-C", str(remote), "show", f"ai-feature/issue-{first}:hello.txt"]
    pushed = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    assert pushed == "hello\n"
    for folder in (tmp_path / "report", tmp_path / "ws"):  # logs, reports, mirror, git config
        for path in (p for p in folder.rglob("*") if p.is_file()):
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("processes", [0, 1], ids=["threads", "issue-process"])
def test_a_daemon_an_agent_started_is_ended_with_its_issue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, processes: int
) -> None:
    """The agent starts a daemon (`setsid`), which outlives its command (a later command
    sees it) but not its issue, whether issues run in this process or in an issue process."""
    remote = bare_repo(tmp_path / "remote.git")
    pid_file, alive = tmp_path / "daemon.pid", tmp_path / "alive"
    still_there = f"kill -0 $(cat {pid_file}) && touch {alive}"
    with FakeGitHub(token="t", owner="acme", repo="widgets", clone_url=str(remote)) as github, \
            FakeAnthropic(api_key="k") as claude:  # fmt: skip
        for label in ("ready-for-dev", "in-progress", "ai-review", "ai-failed"):
            github.add_label(label)
        number = github.add_issue("Add a greeting file", "Please add hello.txt", ["ready-for-dev"])
        claude.add(
            tool_turn("run_command", {"argv": ["sh", "-c", escape_command(pid_file)]}),
            tool_turn("run_command", {"argv": ["sh", "-c", still_there]}),
            tool_turn("write_file", {"path": "hello.txt", "content": "hello\n"}),
            text_turn("Added hello.txt."),
        )
        monkeypatch.setenv("GITHUB_API_URL", github.base_url)
        monkeypatch.setenv("GITHUB_TOKEN", "t")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", claude.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
        overrides: dict[str, Any] = {
            "mode": "local", "repo": "acme/widgets", "workers": 1,
            "workspace": str(tmp_path / "ws"), "processes": processes,
        }  # fmt: skip
        with leader_session():
            state = fleet(overrides=overrides, report_dir=str(tmp_path / "report"),
                          return_state=True)  # fmt: skip
        report = state_result(state)
    assert gone_or_killed(pid_file)
    assert isinstance(report, Report) and report.ok, report
    assert alive.exists(), "the daemon did not outlive its command: nothing left to test"
    issue_log = (tmp_path / "report" / "logs" / f"issue-{number}.log").read_text()
    daemon = int(pid_file.read_text())
    assert f"ended what the issue's commands left running: {daemon} (sleep 300)" in issue_log


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "issue-processes"])
def test_workers_report_a_heartbeat_per_stage_and_agent_turn(
    tmp_path: Path, processes: int
) -> None:
    beats: list[tuple[str, str, float]] = []

    class Recorder:
        def run_started(self, flow_run_id: str | None) -> None:
            pass

        def unit_started(self, unit: object, worker: str) -> None:
            pass

        def unit_heartbeat(self, worker: str, activity: str, cost_usd: float) -> None:
            beats.append((worker, activity, cost_usd))

        def unit_finished(self, result: object) -> None:
            pass

    overrides = {"mode": "test", "workspace": str(tmp_path / "ws"), "workers": 2,
                 "agent_seconds": 0.02, "mock_issues": 2, "processes": processes}  # fmt: skip
    with leader_session(), observing(Recorder()):
        state = fleet(overrides=overrides, report_dir=str(tmp_path / "report"), return_state=True)
    report = state_result(state)
    assert report.ok and len(report.tasks) == 2
    for task in report.tasks:
        activities = [activity for worker, activity, _ in beats if worker == task.worker
                      and activity.startswith(f"{task.name}: ")]  # fmt: skip
        assert [a.removeprefix(f"{task.name}: ") for a in activities] == [
            "claim",
            "workspace",
            "agent",
            "agent turn 1",
            "agent turn 2",
            "checks",
            "publish",
            "finish",
            "cleanup",
        ]
        costs = [cost for worker, activity, cost in beats if activity.startswith(task.name)]
        assert costs == sorted(costs) and costs[-1] == pytest.approx(task.cost_usd)


def test_unknown_label_on_the_repository_is_a_clear_error(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    with FakeGitHub(token="t0ken", owner="acme", repo="widgets") as github:
        github.add_label("ready-for-dev")  # the other three are missing
        env = {**cli_env, "GITHUB_API_URL": github.base_url, "GITHUB_TOKEN": "t0ken",
               "ANTHROPIC_API_KEY": "sk-ant-test"}  # fmt: skip
        result = run_cli(["fleet", "--mode", "local", "--repo", "acme/widgets",
                          "--workspace", str(tmp_path / "ws")], env)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "acme/widgets has no label" in result.stderr and "in-progress" in result.stderr
    assert "t0ken" not in result.stdout + result.stderr
    assert not github.pulls


def test_next_poll_merges_approved_pull_requests(tmp_path: Path, cli_env: dict[str, str]) -> None:
    """auto_merge_on_approval: the leader merges the approved ones at its next poll."""
    workspace = tmp_path / "ws"
    first = run_cli(fleet_args(workspace, "--mock-issues", "2"), cli_env)
    assert first.returncode == 0, first.stdout + first.stderr
    store = tracker(workspace)
    approved, waiting = store.pulls()
    store.add_review(approved.number, "alice", "APPROVED")
    second = run_cli(fleet_args(workspace, "--mock-issues", "0"), cli_env)
    assert second.returncode == 0, second.stdout + second.stderr
    merged = {pull.number: pull.state for pull in tracker(workspace).pulls()}
    assert merged == {approved.number: "merged", waiting.number: "open"}


def test_log_level_shows_the_agents_turns_and_rejects_nonsense(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    result = run_cli(fleet_args(workspace, "--mock-issues", "1"), {**cli_env, "LOG_LEVEL": "info"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "INFO flows.fleet.agent: turn 1" in result.stderr
    assert result.stderr.count("turn 1") == 1, result.stderr  # not again in Prefect's format
    in_a_child = run_cli(fleet_args(workspace, "--mock-issues", "1", "--processes", "1"),
                         {**cli_env, "LOG_LEVEL": "info"})  # fmt: skip
    assert in_a_child.returncode == 0, in_a_child.stdout + in_a_child.stderr
    assert "INFO flows.fleet.agent: turn 1" in in_a_child.stderr
    bad = run_cli(fleet_args(workspace), {**cli_env, "LOG_LEVEL": "chatty"})
    assert bad.returncode == 2
    assert "LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got 'chatty'" in bad.stderr


def test_a_flow_run_being_cancelled_is_told_from_a_plain_interrupt() -> None:
    """Prefect marks a run Cancelling before it signals the run's process: its issues are
    then failed, not put back in the queue (see worker.CANCELLED)."""
    seen: list[bool] = []

    @flow(persist_result=False)
    def probe() -> None:
        seen.append(flow_run_cancelled())
        context = FlowRunContext.get()
        assert context is not None and context.flow_run is not None
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(context.flow_run.id, Cancelling(), force=True)
        seen.append(flow_run_cancelled())
        with socket.socket() as blackhole:  # an API that accepts and never answers
            blackhole.bind(("127.0.0.1", 0))
            blackhole.listen(8)
            api = f"http://127.0.0.1:{blackhole.getsockname()[1]}/api"
            asked = time.monotonic()
            with temporary_settings(updates={PREFECT_API_URL: api}):
                seen.append(flow_run_cancelled())
            waited.append(time.monotonic() - asked)

    waited: list[float] = []
    probe(return_state=True)
    assert seen == [False, True, False]
    assert waited[0] < 10  # not Prefect's retries of a 30 s timeout: the stop waits on it
    assert not flow_run_cancelled()  # outside a flow run


def test_local_mode_can_be_tried_offline_with_the_standins(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """`python -m tests.fakes.standins --run`: the fleet in local mode, through PyGithub and
    the anthropic SDK, against the loopback stand-ins; every ready issue gets its PR."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.fakes.standins", "--run", "--dir", str(tmp_path)],
        cwd=REPO, env=cli_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "3/3 succeeded" in result.stdout
    report = json.loads((tmp_path / "workspace" / ".fleet" / "report" / "report.json").read_text())
    assert sorted(t["pull_request"] for t in report["tasks"]) == [
        f"https://github.com/demo/widgets/pull/{n}" for n in (4, 5, 6)
    ]
