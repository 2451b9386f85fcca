"""Operations on a real server: deployments served from one process on a schedule, bad
schedules, a missing work pool, and a server restarted in the middle of a fleet run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from deployments.server_setup import CRASH_DETECTION, ensure_crash_detection, ensure_work_pool
from flows._prefect import local_server, wait_for_api
from flows.config import ConfigError
from flows.fleet.testbed import ensure_remote, ensure_tracker
from flows.fleet.tracker import Labels
from tests.conftest import REPO, run_cli, write_config


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployments.serve", *args]


def test_served_poller_fires_on_its_schedule_and_resolves_the_issues(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    workspace = tmp_path / "ws"
    ensure_remote(workspace)
    tracker = ensure_tracker(workspace, 3, Labels())
    config = write_config(tmp_path, f"""
        fleet:
          mode: distributed
          simulate: true
          workspace: {workspace}
          mock_issues: 0
          agent_seconds: 0.2
          failure_rate: 0
        """, "fleet.yml")  # fmt: skip
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        serve_command("--config", str(config), "--interval", "5", "--limit", "2"),
        cwd=REPO, env=cli_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if all("ai-review" in tracker.labels_of(n) for n in (1, 2, 3)):
                break
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert sorted(p.branch for p in tracker.pulls()) == [f"ai-feature/issue-{n}" for n in (1, 2, 3)]
    # served under names of their own: prefect.yaml's work-pool deployments are left alone
    with (
        temporary_settings(updates={PREFECT_API_URL: cli_env["PREFECT_API_URL"]}),
        get_client(sync_client=True) as client,
    ):
        names = {f"{client.read_flow(d.flow_id).name}/{d.name}" for d in client.read_deployments()}
    assert {"issue-poller/issue-poller-served", "resolve-issue/resolve-issue-served",
            "pipeline/pipeline-served"} <= names  # fmt: skip
    assert not {"issue-poller/issue-poller", "resolve-issue/resolve-issue"} & names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cron", "every five minutes"], "--cron: not a valid cron expression"),
        (["--interval", "0"], "--interval: must be 1 to 86400 seconds, got 0"),
        (["--interval", "1e300"], "--interval: must be 1 to 86400 seconds"),
        (["--interval", "nan"], "--interval: expected a finite, non-negative number"),
        (["--config", "no/such/file.yml"], "--config: no such file"),
    ],
)
def test_serve_rejects_bad_input(args: list[str], message: str, cli_env: dict[str, str]) -> None:
    result = subprocess.run(serve_command(*args), cwd=REPO, env=cli_env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--crash-after", "99999999999999"],
            "--crash-after: must be 60 (two heartbeats) to 86400",
        ),
        (["--crash-after", "30"], "--crash-after: must be 60"),
        (["--workers", "9223372036854775808"], "--workers: at most 10000"),
    ],
)
def test_init_rejects_bad_input_before_touching_the_server(
    args: list[str], message: str, cli_env: dict[str, str]
) -> None:
    result = run_cli(["init", *args], cli_env)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_init_keeps_what_it_cannot_replace(prefect_server: str) -> None:
    """A pool of another type is refused, not silently kept; a crash-detection automation
    that cannot be built leaves the old one in place."""
    with (
        temporary_settings(updates={PREFECT_API_URL: prefect_server}),
        get_client(sync_client=True) as client,
    ):
        ensure_work_pool(client, "typed-pool", "process", 2)
        with pytest.raises(ConfigError, match="exists with type 'process', not 'docker'"):
            ensure_work_pool(client, "typed-pool", "docker", 2)
        ensure_crash_detection(client, 75)
        try:
            with pytest.raises(OverflowError):
                ensure_crash_detection(client, 1e14)
            [kept] = client.read_automations_by_name(CRASH_DETECTION)
            assert kept.trigger.within.total_seconds() == 75  # type: ignore[union-attr]
        finally:
            for automation in client.read_automations_by_name(CRASH_DETECTION):
                client.delete_automation(automation.id)


def test_deploy_to_a_missing_work_pool_fails_clearly(tmp_path: Path) -> None:
    """`prefect deploy` against a server without the pool: a non-zero exit naming it."""
    with local_server(home=tmp_path / "home") as url:
        env = {**os.environ, "PREFECT_API_URL": f"{url}/api", "PREFECT_HOME": str(tmp_path)}
        deploy = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", "pipeline"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert deploy.returncode != 0
    assert "local-process" in deploy.stdout + deploy.stderr


def test_commands_needing_a_server_say_so(tmp_path: Path) -> None:
    unreachable = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api",
                   "PYTHONPATH": str(REPO)}  # fmt: skip
    for args in (["init"], ["blocks", "register"]):
        result = run_cli(args, unreachable)
        assert result.returncode == 2, result.stderr
        assert "no Prefect server answers at http://127.0.0.1:9/api" in result.stderr
        assert "temporary" not in result.stderr  # which these commands cannot use
        assert "Traceback" not in result.stderr
    pipeline = run_cli(["pipeline", "--config", "examples/multi-agent-config.yml"], unreachable)
    assert pipeline.returncode == 2
    assert "or unset PREFECT_API_URL to run with a temporary local server" in pipeline.stderr
    unset = {k: v for k, v in unreachable.items() if k != "PREFECT_API_URL"}
    unset["PREFECT_HOME"] = str(tmp_path)
    result = run_cli(["init"], unset)
    assert result.returncode == 2
    assert "PREFECT_API_URL: not set: init needs a running Prefect server" in result.stderr


def test_a_missing_block_is_a_clear_error(tmp_path: Path, cli_env: dict[str, str]) -> None:
    config = write_config(tmp_path, """
        fleet:
          mode: local
          repo: acme/widgets
          github_block: no-such-block
        """, "fleet.yml")  # fmt: skip
    result = run_cli(["fleet", "--config", str(config)], cli_env)
    assert result.returncode == 2
    assert "no-such-block" in result.stderr and "fleet-github" in result.stderr
    assert "Traceback" not in result.stderr


def test_fleet_run_survives_a_server_restart(tmp_path: Path) -> None:
    """Stop the server in the middle of a fleet run and start it again on the same port and
    database: the run finishes, its report is complete, the server has the flow run."""
    home = tmp_path / "home"
    with local_server(home=home) as url:
        port = url.rsplit(":", 1)[1]
    env = {**os.environ, "PREFECT_API_URL": f"{url}/api", "PYTHONPATH": str(REPO),
           "PREFECT_HOME": str(home)}  # fmt: skip
    server = start_server(home, port)
    try:
        fleet = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "fleet", "--mode", "test", "--workers", "2",
             "--mock-issues", "6", "--agent-seconds", "3", "--workspace", str(tmp_path / "ws")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # Stop the server once the fleet is running its first issues (not after a fixed
        # time: on a loaded machine the CLI may still be checking the server then).
        issue_logs = tmp_path / "ws" / ".fleet" / "report" / "logs"
        deadline = time.monotonic() + 120
        while not list(issue_logs.glob("*.log")) and time.monotonic() < deadline:
            assert fleet.poll() is None, fleet.communicate()[0].decode()[-3000:]
            time.sleep(0.2)
        stop_server(server)
        time.sleep(3)
        server = start_server(home, port)
        output, _ = fleet.communicate(timeout=300)
    finally:
        stop_server(server)
    text = output.decode()
    assert fleet.returncode == 0, text[-3000:]
    report = json.loads((tmp_path / "ws" / ".fleet" / "report" / "report.json").read_text())
    assert report["summary"]["succeeded"] == 6
    with local_server(home=home), get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[report["flow_run_id"]]))
        )
    assert run.state is not None and run.state.is_completed()


def test_sigterm_stops_the_agents_and_leaves_every_issue_ready(tmp_path: Path) -> None:
    """SIGTERM (a service manager, a cancelled CI job): the agents stop at once, in the
    middle of a turn, their issues and the ones not started stay in the queue (none is left in
    progress), the report is written, and the local Prefect server the CLI started is
    stopped."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "home"))
    workspace = tmp_path / "ws"
    fleet = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", "fleet", "--mode", "test", "--workers", "2",
         "--mock-issues", "3", "--agent-seconds", "40", "--workspace", str(workspace)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    issue_logs = workspace / ".fleet" / "report" / "logs"
    deadline = time.monotonic() + 120
    while len(list(issue_logs.glob("*.log"))) < 2 and time.monotonic() < deadline:
        assert fleet.poll() is None, fleet.communicate()[0].decode()[-3000:]
        time.sleep(0.2)
    fleet.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    output = fleet.communicate(timeout=120)[0].decode()
    assert fleet.returncode == 128 + signal.SIGTERM and "terminated" in output, output[-3000:]
    assert time.monotonic() - signalled < 15  # not the end of a 20 s turn
    ui = re.search(r"http://127\.0\.0\.1:(\d+)", output)
    assert ui is not None, output
    with pytest.raises(OSError):  # the server is gone
        socket.create_connection(("127.0.0.1", int(ui.group(1))), timeout=2).close()
    tracker = ensure_tracker(workspace, 0, Labels())
    assert all("ready-for-dev" in i.labels and "in-progress" not in i.labels
               for i in tracker.issues())  # fmt: skip
    report = json.loads((workspace / ".fleet" / "report" / "report.json").read_text())
    assert report["interrupted"] == "interrupted (SIGTERM)"
    statuses = sorted(task["status"] for task in report["tasks"])
    assert statuses == ["skipped"] * 3, report["tasks"]  # two given back, one not started
    assert not tracker.pulls()


def start_server(home: Path, port: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": ""}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
         port], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    wait_for_api(f"http://127.0.0.1:{port}/api", 120, process)
    return process


def stop_server(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
