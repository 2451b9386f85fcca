"""The pipeline flow on a real Prefect server, running real commands in temporary repos."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows._prefect import state_result
from flows.config import MAX_RETRY_DELAY_SECONDS, ConfigError
from flows.pipeline.flow import pipeline
from flows.pipeline.matrix import TaskSpec
from flows.pipeline.worker import WorkerContext, collect_artifacts, run_task
from flows.report import Report, UnitResult
from tests.conftest import (
    REPO,
    escape_command,
    gone_or_killed,
    run_cli,
    wait_until_gone,
    write_config,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_pipeline(config: Path, tmp_path: Path, **kwargs: Any) -> Report:
    state = pipeline(
        config_path=str(config),
        report_dir=str(tmp_path / "report"),
        cache_root=str(tmp_path / "cache"),
        return_state=True,
        **kwargs,
    )
    report = state_result(state)
    assert isinstance(report, Report)
    assert state.is_failed() == (not report.ok)
    return report


def by_name(report: Report) -> dict[str, UnitResult]:
    return {task.name: task for task in report.tasks}


def times(task: UnitResult) -> tuple[datetime, datetime]:
    assert task.started_at and task.ended_at
    return task.started_at, task.ended_at


def test_tier_order_and_max_parallel_from_real_times(tmp_path: Path) -> None:
    tasks = "\n".join(
        f'  - {{name: t{p}-{i}, priority: {p}, run: "sleep 0.3"}}'
        for p in (1, 2) for i in range(5)
    )  # fmt: skip
    config = write_config(tmp_path, f"name: order\nscaling: {{max_parallel: 2}}\ntasks:\n{tasks}\n")
    report = run_pipeline(config, tmp_path)
    assert report.ok and report.summary.succeeded == 10
    tier1 = [t for t in report.tasks if t.priority == 1]
    tier2 = [t for t in report.tasks if t.priority == 2]
    assert min(times(t)[0] for t in tier2) >= max(times(t)[1] for t in tier1)
    events = sorted(
        [(times(t)[0], 1) for t in report.tasks] + [(times(t)[1], -1) for t in report.tasks]
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak == 2
    assert {t.worker for t in report.tasks} == {"worker-01", "worker-02"}
    # 2 workers over 0.3 s tasks: clearly parallel (the ideal is 1.67), with room for a
    # busy machine's start-up cost per task
    assert 1.2 <= report.summary.speedup <= 2.0


def test_failures_timeouts_and_retries(tmp_path: Path) -> None:
    flaky_marker = tmp_path / "flaky-ran-once"
    pid_file = tmp_path / "hang.pid"
    config = write_config(
        tmp_path,
        f"""
        name: mixed
        defaults: {{retry_delay: 0.1}}
        tasks:
          - {{name: broken, priority: 1, run: "echo nope >&2; exit 3"}}
          - {{name: flaky, priority: 1, retries: 1,
              run: "test -f {flaky_marker} || {{ touch {flaky_marker}; exit 1; }}"}}
          - {{name: hang, priority: 1, timeout: 0.5, run: "sleep 300 & echo $! > {pid_file}; wait"}}
          - {{name: sibling, priority: 1, run: "sleep 0.2"}}
          - {{name: next-tier, priority: 2, run: "true"}}
          - {{name: offline, priority: 2, run: "exit 77", skip_exit_codes: [77]}}
        """,
    )
    report = run_pipeline(config, tmp_path)
    tasks = by_name(report)
    assert not report.ok
    assert tasks["broken"].status == "failed" and tasks["broken"].exit_code == 3
    assert "nope" in tasks["broken"].log_tail
    assert tasks["flaky"].status == "succeeded" and tasks["flaky"].attempts == 2
    assert tasks["hang"].status == "timed_out"
    assert wait_until_gone(int(pid_file.read_text()))
    assert tasks["sibling"].status == "succeeded"
    assert tasks["next-tier"].status == "succeeded"
    assert tasks["offline"].status == "skipped" and tasks["offline"].exit_code == 77
    summary = report.summary
    assert (summary.total, summary.succeeded, summary.failed, summary.timed_out, summary.skipped) \
        == (6, 3, 1, 1, 1)  # fmt: skip


def test_a_process_a_task_left_outside_its_group_is_ended_with_the_run(
    tmp_path: Path,
) -> None:
    """A task starts a daemon (`setsid`): it outlives the task, which a later task sees,
    but not the run."""
    pid_file = tmp_path / "daemon.pid"
    config = write_config(
        tmp_path,
        f"""
        name: leftovers
        tasks:
          - {{name: daemon, priority: 1, run: "{escape_command(pid_file)}"}}
          - {{name: still-there, priority: 2, run: "kill -0 $(cat {pid_file})"}}
        """,
    )
    report = run_pipeline(config, tmp_path)
    assert gone_or_killed(pid_file)
    assert report.ok, by_name(report)["still-there"].log_tail


def test_fail_fast_stops_scheduling(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        name: fast
        fail_fast: true
        scaling: {max_parallel: 1}
        tasks:
          - {name: first, priority: 1, run: "exit 1"}
          - {name: second, priority: 1, run: "true"}
          - {name: later, priority: 2, run: "true"}
        """,
    )
    tasks = by_name(run_pipeline(config, tmp_path))
    assert tasks["first"].status == "failed"
    assert tasks["second"].status == "skipped" and tasks["second"].attempts == 0
    assert tasks["later"].status == "skipped"


def test_setup_cache_hit_and_miss(tmp_path: Path) -> None:
    (tmp_path / "deps.lock").write_text("a==1\n")
    runs = tmp_path / "setup-runs"
    config = write_config(
        tmp_path,
        f"""
        name: cached
        setup:
          run: ["echo run >> {runs}", "mkdir -p $PIPELINE_CACHE_DIR/bin",
                "printf '#!/bin/sh\\necho tool-from-cache\\n' > $PIPELINE_CACHE_DIR/bin/tool",
                "chmod +x $PIPELINE_CACHE_DIR/bin/tool"]
          cache_key_files: [deps.lock]
          path: [bin]
        tasks:
          - {{name: use-tool, priority: 1, run: "tool"}}
          - {{name: use-dir, priority: 1, run: "test -x $PIPELINE_CACHE_DIR/bin/tool"}}
        """,
    )
    first = run_pipeline(config, tmp_path)
    second = run_pipeline(config, tmp_path)
    assert first.ok and second.ok
    assert (first.setup.cache_hit, second.setup.cache_hit) == (False, True)
    assert runs.read_text().count("run") == 1
    assert "tool-from-cache" in by_name(second)["use-tool"].log_tail
    (tmp_path / "deps.lock").write_text("a==2\n")
    third = run_pipeline(config, tmp_path)
    assert not third.setup.cache_hit and third.setup.key != first.setup.key
    assert runs.read_text().count("run") == 2


def test_failed_setup_runs_nothing_and_is_retried_next_time(tmp_path: Path) -> None:
    marker = tmp_path / "task-ran"
    flag = tmp_path / "setup-may-pass"
    config = write_config(
        tmp_path,
        f"""
        name: badsetup
        setup: {{run: ["test -f {flag}"]}}
        tasks: [{{name: a, priority: 1, run: "touch {marker}"}}]
        """,
    )
    report = run_pipeline(config, tmp_path)
    assert report.setup.status == "failed" and not report.ok
    assert by_name(report)["a"].status == "skipped"
    assert not marker.exists()
    with get_client(sync_client=True) as client:  # the skipped units count as done
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[report.flow_run_id]))
        deadline = time.monotonic() + 60  # artifacts arrive asynchronously
        progress = None
        while progress is None and time.monotonic() < deadline:
            artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=flow_runs)}
            progress = artifacts.get("pipeline-badsetup-progress")
            time.sleep(0.2)
    assert progress is not None and progress.data == 100.0
    flag.touch()
    again = run_pipeline(config, tmp_path)
    assert again.ok and not again.setup.cache_hit and marker.exists()


def test_report_files_artifacts_and_task_run_names(tmp_path: Path) -> None:
    (tmp_path / "dist").mkdir()
    config = write_config(
        tmp_path,
        """
        name: reported
        tiers: {1: quality, 2: build}
        tasks:
          - {name: lint, priority: 1, run: "echo linted"}
          - {name: bad, priority: 1, run: "exit 2"}
          - {name: build, priority: 2, run: "echo wheel > dist/app.whl", artifacts: ["dist/*.whl"]}
          - {name: no-output, priority: 2, run: "true", artifacts: ["dist/*.tar.gz"]}
        """,
    )
    report = run_pipeline(config, tmp_path)
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["kind"] == "pipeline" and data["name"] == "reported"
    assert data["flow_run_id"] == report.flow_run_id
    assert set(data["summary"]) >= {
        "total",
        "succeeded",
        "failed",
        "timed_out",
        "skipped",
        "success_rate",
        "throughput_per_min",
        "speedup",
        "efficiency",
    }
    assert set(data["setup"]) >= {"cache_hit", "duration_s"}
    build = next(t for t in data["tasks"] if t["name"] == "build")
    assert set(build) >= {"name", "priority", "status", "attempts", "started_at", "ended_at",
                          "duration_s", "exit_code", "worker", "peak_rss_mb", "artifacts",
                          "log_tail"}  # fmt: skip
    assert build["artifacts"] == [{"path": "artifacts/build/dist/app.whl", "bytes": 6}]
    assert (tmp_path / "report" / build["artifacts"][0]["path"]).read_text() == "wheel\n"
    no_output = next(t for t in data["tasks"] if t["name"] == "no-output")
    assert no_output["status"] == "failed" and "matched no file" in no_output["log_tail"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Tier 1: quality" in markdown and "### bad (failed)" in markdown

    with get_client(sync_client=True) as client:
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[report.flow_run_id]))
        flow_run = client.read_flow_run(report.flow_run_id)  # type: ignore[arg-type]
        assert flow_run.state and flow_run.state.is_failed()
        expected_keys = {"pipeline-reported-tier-1", "pipeline-reported-tier-2",
                         "pipeline-reported-report", "pipeline-reported-progress"}  # fmt: skip
        deadline = time.monotonic() + 60  # task runs and artifacts arrive asynchronously
        names: set[str] = set()
        while time.monotonic() < deadline:
            names = {t.name for t in client.read_task_runs(flow_run_filter=flow_runs)}
            artifacts = {a.key: a for a in client.read_artifacts(flow_run_filter=flow_runs)}
            progress = artifacts.get("pipeline-reported-progress")
            done = progress is not None and progress.data == 100.0
            if len(names) == 4 and expected_keys <= set(artifacts) and done:
                break
            time.sleep(0.2)
    assert names == {"p1 lint", "p1 bad", "p2 build", "p2 no-output"}
    assert expected_keys <= set(artifacts)
    tier1 = json.loads(artifacts["pipeline-reported-tier-1"].data)  # type: ignore[arg-type]
    assert {row["task"] for row in tier1} == {"lint", "bad"}
    assert any(row.get("command") == "exit 2" for row in tier1)
    assert artifacts["pipeline-reported-progress"].data == 100.0
    assert "# Pipeline report: reported" in str(artifacts["pipeline-reported-report"].data)


def test_artifacts_never_leave_the_workdir_or_the_artifacts_folder(tmp_path: Path) -> None:
    workdir, outside = tmp_path / "repo", tmp_path / "outside"
    workdir.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (workdir / "link").symlink_to(outside)
    (workdir / "app.whl").write_text("wheel")
    ctx = WorkerContext(workdir=workdir, env={}, report_dir=tmp_path / "report")
    # Patterns the config refuses, and a symlink inside the workdir that leads out.
    patterns = ("../outside/secret", "../repo/app.whl", str(outside / "secret"), "link/*")
    spec = TaskSpec(name="t", priority=1, run="true", timeout=5, retries=0, retry_delay=0,
                    continue_on_error=True, artifacts=("app.whl", *patterns))  # fmt: skip
    collected, missing, refused = collect_artifacts(spec, ctx)
    assert [a.path for a in collected] == ["artifacts/t/app.whl"] and not missing
    assert len(refused) == len(patterns)
    copied = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(map(str, copied)) == [
        "outside/secret",
        "repo/app.whl",
        "report/artifacts/t/app.whl",
    ]
    result = run_task(spec, "w1", ctx)
    assert result.status == "failed" and "outside the workdir refused" in result.log_tail


def test_doubling_retry_delay_stops_at_the_maximum(tmp_path: Path) -> None:
    sleeps: list[float] = []
    ctx = WorkerContext(workdir=tmp_path, env={}, report_dir=tmp_path / "r", sleep=sleeps.append)
    spec = TaskSpec(name="t", priority=1, run=["false"], timeout=5, retries=40,
                    retry_delay=1, continue_on_error=True)  # fmt: skip
    assert run_task(spec, "w1", ctx).attempts == 41
    assert sleeps[:3] == [1, 2, 4] and max(sleeps) == MAX_RETRY_DELAY_SECONDS


def test_units_sharing_a_slot_are_siblings_in_the_flow_run(tmp_path: Path) -> None:
    """Each unit is submitted by the thread of the one that freed its slot, yet every
    task run is a direct child of the flow run, not of the unit before it."""
    config = write_config(
        tmp_path,
        """
        name: one-slot
        scaling: {max_parallel: 1}
        tasks:
          - {name: first, priority: 1, run: "true"}
          - {name: second, priority: 1, run: "true"}
          - {name: third, priority: 1, run: "true"}
        """,
    )
    report = run_pipeline(config, tmp_path)
    assert [t.worker for t in report.tasks] == ["worker-01"] * 3
    with get_client(sync_client=True) as client:
        flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[report.flow_run_id]))
        deadline = time.monotonic() + 60  # task runs arrive asynchronously
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(flow_run_filter=flow_runs)
            if len(task_runs) == 3 and all(t.state and t.state.is_final() for t in task_runs):
                break
            time.sleep(0.2)
    assert sorted(t.name for t in task_runs) == ["p1 first", "p1 second", "p1 third"]
    assert all("__parents__" not in t.task_inputs for t in task_runs), [
        t.task_inputs for t in task_runs
    ]


def test_cli_exit_codes_and_dry_run(tmp_path: Path, cli_env: dict[str, str]) -> None:
    marker = tmp_path / "ran"
    good = write_config(
        tmp_path,
        f'name: good\ntasks: [{{name: a, priority: 1, run: "touch {marker}"}}]\n',
        "good.yml",
    )
    bad = write_config(
        tmp_path, 'name: bad\ntasks: [{name: a, priority: 1, run: "exit 1"}]\n', "bad.yml"
    )
    dry = run_cli(["pipeline", "--config", str(good), "--dry-run"], cli_env)
    assert dry.returncode == 0 and "Tier 1 (priority-1): 1 task on 1 worker slot" in dry.stdout
    assert not marker.exists()
    ok = run_cli(["pipeline", "--config", str(good), "--report-dir", str(tmp_path / "r1")], cli_env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert marker.exists() and (tmp_path / "r1" / "report.json").exists()
    assert "Prefect UI: http://127.0.0.1:" in ok.stdout
    failed = run_cli(
        ["pipeline", "--config", str(bad), "--report-dir", str(tmp_path / "r2")], cli_env
    )
    assert failed.returncode == 1
    assert "❌ p1 a" in failed.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_run_kills_its_commands_and_still_reports(
    tmp_path: Path, cli_env: dict[str, str], signum: signal.Signals
) -> None:
    """SIGTERM (a cancelled CI job, `docker stop`) or Ctrl-C: the running commands are
    killed with their process groups, nothing more starts (no retry either), the report
    says so, and the CLI exits 128 + the signal's number."""
    marker = tmp_path / "later-ran"
    config = write_config(
        tmp_path,
        f"""
        name: interrupted
        tasks:
          - {{name: long-a, priority: 1, run: "sleep 300 & echo $! > a.pid; wait"}}
          - {{name: long-b, priority: 1, run: "sleep 300 & echo $! > b.pid; wait"}}
          - {{name: flaky, priority: 1, run: "exit 1", retries: 3, retry_delay: 60}}
          - {{name: later, priority: 2, run: "touch {marker}"}}
        """,
    )
    report_dir = tmp_path / "report"
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", "pipeline", "--config", str(config),
         "--report-dir", str(report_dir)],
        cwd=REPO, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pid_files = [tmp_path / "a.pid", tmp_path / "b.pid"]
    wait_for(cli, lambda: all(f.is_file() and f.read_text().strip() for f in pid_files))
    flaky_log = report_dir / "logs" / "flaky.log"
    wait_for(cli, lambda: flaky_log.is_file() and "retrying in 60s" in flaky_log.read_text())
    cli.send_signal(signum)
    signalled = time.monotonic()
    output = cli.communicate(timeout=120)[0]
    assert cli.returncode == 128 + signum, output[-3000:]
    assert time.monotonic() - signalled < 30  # not the 300 s the commands had left
    assert f"report of what ran: {report_dir / 'report.md'}" in output
    assert all(wait_until_gone(int(f.read_text())) for f in pid_files)
    assert not marker.exists()
    reason = f"interrupted ({signum.name})"
    report = json.loads((report_dir / "report.json").read_text())
    assert report["interrupted"] == reason
    tasks = {t["name"]: t for t in report["tasks"]}
    for name in ("long-a", "long-b"):
        assert tasks[name]["status"] == "failed"
        assert f"[stopped: {reason}: process group killed]" in tasks[name]["log_tail"]
    flaky, later = tasks["flaky"], tasks["later"]
    assert flaky["attempts"] == 1 and f"not retried: {reason}" in flaky["log_tail"]
    assert (later["status"], later["log_tail"]) == ("skipped", f"skipped: {reason}")
    assert f"⛔ {reason}" in (report_dir / "report.md").read_text()
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(report["flow_run_id"])
    assert run.state is not None and run.state.is_crashed(), run.state


def wait_for(cli: subprocess.Popen[str], condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()[0][-3000:]
        time.sleep(0.1)


def test_an_interrupted_setup_is_killed_and_reported(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """Ctrl-C while the setup installs: its commands die with their group (one that
    ignores SIGTERM too, after the grace period), no task runs, and the report says why."""
    config = write_config(
        tmp_path,
        f"""
        name: setup-interrupted
        setup:
          run: ["(trap '' TERM; exec sleep 300) & echo $! > {tmp_path}/setup.pid; wait"]
          cache_key_files: []
        tasks:
          - {{name: lint, priority: 1, run: "true"}}
        """,
    )
    report_dir = tmp_path / "report"
    cli = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy", "pipeline", "--config", str(config),
         "--report-dir", str(report_dir)],
        cwd=REPO, env={**cli_env, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    pid_file = tmp_path / "setup.pid"
    wait_for(cli, lambda: pid_file.is_file() and bool(pid_file.read_text().strip()))
    cli.send_signal(signal.SIGINT)
    output = cli.communicate(timeout=120)[0]
    assert cli.returncode == 130, output[-3000:]
    assert wait_until_gone(int(pid_file.read_text()))
    report = json.loads((report_dir / "report.json").read_text())
    assert report["interrupted"] == "interrupted (SIGINT)"
    assert report["setup"]["status"] == "failed"
    assert report["setup"]["log_tail"] == "setup stopped: interrupted (SIGINT)"
    assert [(t["name"], t["status"]) for t in report["tasks"]] == [("lint", "skipped")]


def test_a_report_dir_parameter_that_cannot_be_a_folder_is_named_as_such(
    tmp_path: Path,
) -> None:
    """A deployment's run gets the report dir as a flow parameter, not as an option."""
    config = write_config(tmp_path, 'name: x\ntasks: [{name: a, priority: 1, run: "true"}]\n')
    state = pipeline(config_path=str(config), report_dir="/dev/null/report", return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"^flow parameters: report_dir: '/dev/null' is not a"):
        state.result()


def test_a_reader_that_stops_early_gets_no_traceback(tmp_path: Path) -> None:
    """`--dry-run | head`: the pipe closes before the matrix is printed."""
    config = write_config(tmp_path, 'name: p\ntasks: [{name: a, priority: 1, run: "true"}]\n')
    command = [sys.executable, "-m", "flows.deploy", "pipeline", "--config", str(config),
               "--dry-run"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # long before the CLI has imported what it needs to print
    errors = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and "Traceback" not in errors, errors
