"""Command line: `python -m flows.deploy <command>`.

    pipeline   run a pipeline config (the CI job)
    fleet      resolve ready-for-dev issues with parallel agents, one pull request each
    init       prepare a Prefect server: work pool and fleet size, crash detection, blocks
    blocks     register the block types, or save blocks from the environment

Exit codes: 0 all units succeeded, 1 some failed, 2 bad input (config or arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

from flows import _prefect
from flows.config import ConfigError, resolve_config_path, resolve_folder
from flows.logs import show_project_logs
from flows.report import Report

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite, non-negative number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.deploy",
        description="Run many workers in parallel on Prefect.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pipeline = commands.add_parser(
        "pipeline", help="run a pipeline config: setup, tiers of parallel tasks, report"
    )
    pipeline.add_argument("--config", required=True, type=Path, help="the pipeline YAML file")
    pipeline.add_argument(
        "--report-dir", type=Path, help="where report.md/report.json go "
        "(default: <workdir>/.pipeline/report)",
    )  # fmt: skip
    pipeline.add_argument("--max-parallel", type=positive_int, help="override scaling.max_parallel")
    pipeline.add_argument(
        "--dry-run", action="store_true", help="print the task matrix and run nothing"
    )
    pipeline.add_argument(
        "--verbose", action="store_true", help="also show Prefect's own log lines"
    )
    pipeline.set_defaults(handler=run_pipeline_command)

    fleet = commands.add_parser(
        "fleet", help="resolve ready-for-dev issues with parallel agents, one pull request each"
    )
    fleet.add_argument("--mode", choices=("test", "local", "distributed"),
                       help="default: the config's mode, else test")  # fmt: skip
    fleet.add_argument("--config", type=Path, help="YAML file with a `fleet:` section")
    fleet.add_argument("--repo", help="OWNER/NAME of the GitHub repository (local mode)")
    fleet.add_argument("--workers", type=positive_int, help="parallel agent workers")
    fleet.add_argument("--processes", type=int, help="child processes that run the workers' "
                       "issues; 0: threads of the leader (default: by run size)")  # fmt: skip
    fleet.add_argument("--workspace", help="workspace root (default ./parallel_workspace, "
                       "or $WORKSPACE_DIR)")  # fmt: skip
    fleet.add_argument("--report-dir", type=Path, help="default <workspace>/.fleet/report")
    fleet.add_argument("--monitor-duration", type=seconds, default=0.0,
                       help="keep polling for new issues for this many seconds")  # fmt: skip
    fleet.add_argument("--mock-issues", type=int, help="test mode: mock issues to add")
    fleet.add_argument("--mock-issues-file", help="test mode: a YAML list of issues to add "
                       "(title, body, labels), each once")  # fmt: skip
    fleet.add_argument("--agent-seconds", type=float, help="test mode: time per simulated agent")
    fleet.add_argument("--failure-rate", type=float, help="test mode: share of agents that fail")
    fleet.add_argument("--simulate", action="store_true",
                       help="distributed mode: mock issues and simulated agents")  # fmt: skip
    fleet.add_argument("--verbose", action="store_true", help="also show Prefect's log lines")
    fleet.set_defaults(handler=run_fleet_command)

    init = commands.add_parser(
        "init", help="prepare the Prefect server: work pool and fleet size, crash detection"
    )
    init.add_argument("--pool", default="local-process",
                      help="work pool name (default: %(default)s)")  # fmt: skip
    init.add_argument("--type", default="process", choices=("process", "docker"),
                      dest="pool_type", help="work pool type (default: %(default)s)")  # fmt: skip
    init.add_argument("--workers", type=positive_int, default=3,
                      help="the pool's concurrency limit, the fleet size "
                      "(default: %(default)s)")  # fmt: skip
    init.add_argument("--crash-after", type=positive_int, default=75, metavar="SECONDS",
                      help="mark a run Crashed after this long without a heartbeat "
                      "(at least 60: runs beat every 30 s; default: %(default)s)")  # fmt: skip
    init.set_defaults(handler=run_init_command)

    blocks = commands.add_parser("blocks", help="credentials as Prefect blocks")
    blocks.add_argument("action", choices=("register", "save"),
                        help="register: the block types; save: blocks from GITHUB_TOKEN, "
                        "ANTHROPIC_API_KEY, ... and the fleet settings")  # fmt: skip
    blocks.add_argument("--config", type=Path, help="YAML file with a `fleet:` section")
    blocks.add_argument("--repo", help="OWNER/NAME for the GitHub block")
    blocks.add_argument(
        "--github-block", help="name of the GitHub block (default: the config's, else fleet-github)"
    )
    blocks.add_argument(
        "--agent-block", help="name of the agent block (default: the config's, else fleet-agent)"
    )
    blocks.add_argument("--overwrite", action="store_true", help="replace existing blocks")
    blocks.set_defaults(handler=run_blocks_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        apply_log_level(os.environ.get("LOG_LEVEL"))
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:  # e.g. `--dry-run | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 128 + signal.SIGPIPE


class Terminated(BaseException):
    """SIGTERM, as an exception: what the run holds is released on the way out (the local
    Prefect server stopped, artifacts flushed), which the default action (death) skips."""


def _terminated(signum: int, frame: object) -> None:
    # A flow run swaps this handler out for Prefect's while it runs, ends the run on the
    # signal, then puts this one back and signals again.
    raise Terminated


def apply_log_level(value: str | None) -> None:
    """LOG_LEVEL (DEBUG, INFO, WARNING, ERROR): the level of this project's own loggers
    (`flows.*`, e.g. each agent turn at INFO), shown on stderr. Prefect's own loggers follow
    PREFECT_LOGGING_LEVEL."""
    if not value:
        return
    level = logging.getLevelName(value.strip().upper())
    if not isinstance(level, int):
        raise ConfigError("environment", "LOG_LEVEL",
                          f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")  # fmt: skip
    show_project_logs(level)


def run_pipeline_command(args: argparse.Namespace) -> int:
    from flows.pipeline.flow import pipeline, pipeline_plan
    from flows.pipeline.matrix import describe_matrix

    config_path = resolve_config_path(args.config)
    matrix, plan = pipeline_plan(config_path, args.report_dir, args.max_parallel)
    print(describe_matrix(matrix), flush=True)
    if args.dry_run:
        return EXIT_OK
    print(flush=True)
    started = time.time()
    try:
        with leader_run(f"pipeline {matrix.name}", args.verbose) as started_server:
            state = pipeline(
                config_path=str(config_path),
                report_dir=str(plan.report_dir),
                max_parallel=args.max_parallel,
                return_state=True,
            )
            report = finished_report(state, started_server)
    except (KeyboardInterrupt, Terminated):
        print_report_written(plan.report_dir, since=started)
        raise
    print_summary(report, plan.report_dir, temporary_ui=started_server)
    return EXIT_OK if report.ok else EXIT_FAILED


def run_fleet_command(args: argparse.Namespace) -> int:
    from flows.fleet.config import load_fleet_config, refuse_options_of_other_modes
    from flows.fleet.flow import connect, default_report_dir, fleet

    overrides = {
        "mode": args.mode, "repo": args.repo, "workers": args.workers,
        "processes": args.processes,
        "workspace": args.workspace, "mock_issues": args.mock_issues,
        "mock_issues_file": args.mock_issues_file,
        "agent_seconds": args.agent_seconds, "failure_rate": args.failure_rate,
    }  # fmt: skip
    if args.simulate:
        overrides["simulate"] = True
    settings = load_fleet_config(args.config, overrides)
    refuse_options_of_other_modes(settings, overrides)
    if args.mock_issues_file:  # absolute: runs in another directory find it too
        overrides["mock_issues_file"] = settings.mock_issues_file
    workspace_source = (
        ("command line", "--workspace") if args.workspace else ("fleet settings", "workspace")
    )
    workspace = resolve_folder(Path(settings.workspace), *workspace_source)
    report_root = (
        resolve_folder(args.report_dir, "command line", "--report-dir")
        if args.report_dir
        else resolve_folder(default_report_dir(settings), *workspace_source)
    )
    if settings.mode == "distributed":
        _prefect.require_api("distributed mode")
        check_pool_ready()
        overrides["workspace"] = str(workspace)  # the runs work in the deployment's directory
    connect(settings).close()  # bad tokens, repositories or labels fail here, before any work
    overrides["mock_issues"] = 0  # test mode: the issues were just added
    config_path = str(resolve_config_path(args.config)) if args.config else None
    deadline = time.monotonic() + args.monitor_duration
    reports: list[tuple[Report, Path]] = []
    report_dir = report_root  # of the poll under way
    poll_started = time.time()
    started_server = False
    try:
        with leader_run(f"fleet {settings.repo or 'test'}", args.verbose) as started_server:
            while True:
                report_dir = (
                    report_root / f"poll-{len(reports) + 1}" if args.monitor_duration
                    else report_root
                )  # fmt: skip
                poll_started = time.time()
                state = fleet(config_path=config_path, overrides=overrides,
                              report_dir=str(report_dir), return_state=True)  # fmt: skip
                report = finished_report(state, started_server)
                reports.append((report, report_dir))
                _prefect.send_deferred_artifacts()  # in the UI now, not when monitoring ends
                if time.monotonic() >= deadline:
                    break
                if not report.tasks:
                    time.sleep(
                        min(settings.poll_interval_seconds, max(0.0, deadline - time.monotonic()))
                    )
    except (KeyboardInterrupt, Terminated):
        print_summaries(reports, started_server)  # the polls that ended before
        print_report_written(report_dir, since=poll_started)
        raise
    print_summaries(reports, started_server)
    return EXIT_OK if all(report.ok for report, _ in reports) else EXIT_FAILED


def print_summaries(reports: list[tuple[Report, Path]], temporary_ui: bool) -> None:
    """The summary of each poll that had issues (of the only poll, even without)."""
    for report, report_dir in reports:
        if report.tasks or len(reports) == 1:
            print_summary(report, report_dir, temporary_ui=temporary_ui)


def run_init_command(args: argparse.Namespace) -> int:
    from prefect import get_client

    from blocks import register_blocks
    from deployments.server_setup import (
        CRASH_DETECTION,
        MAX_CRASH_AFTER,
        MAX_POOL_CONCURRENCY,
        MIN_CRASH_AFTER,
        ensure_crash_detection,
        ensure_priority_queues,
        ensure_work_pool,
    )

    if not MIN_CRASH_AFTER <= args.crash_after <= MAX_CRASH_AFTER:
        problem = f"must be {MIN_CRASH_AFTER} (two heartbeats) to {MAX_CRASH_AFTER} seconds"
        raise ConfigError("command line", "--crash-after", f"{problem}, got {args.crash_after}")
    if args.workers > MAX_POOL_CONCURRENCY:
        raise ConfigError("command line", "--workers",
                          f"at most {MAX_POOL_CONCURRENCY}, got {args.workers}")  # fmt: skip
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9 _.-]*", args.pool):
        raise ConfigError("command line", "--pool", f"not a valid work pool name: {args.pool!r}")
    _prefect.require_api("init")
    with get_client(sync_client=True) as client:
        pool = ensure_work_pool(client, args.pool, args.pool_type, args.workers)
        ensure_priority_queues(client, pool.name)
        ensure_crash_detection(client, args.crash_after)
    register_blocks()
    print(f"work pool {pool.name!r} ({pool.type}), concurrency limit {pool.concurrency_limit}, "
          "queues urgent > normal > low")  # fmt: skip
    print("block types registered: fleet-github, fleet-agent")
    print(f"automation {CRASH_DETECTION!r}: runs without a heartbeat for {args.crash_after}s "
          "are marked Crashed")  # fmt: skip
    deploy = "prefect --no-prompt deploy --all"
    if pool.type == "docker":
        deploy = "prefect --no-prompt deploy --prefect-file docker/prefect-docker.yaml --all"
    print(f"next: `{deploy}`, then on each machine "
          f"`WORKER_ID=worker-1 prefect worker start --pool {pool.name}`")  # fmt: skip
    return EXIT_OK


def run_blocks_command(args: argparse.Namespace) -> int:
    from blocks import register_blocks, save_blocks_from_env
    from flows.fleet.config import load_fleet_config

    _prefect.require_api("blocks")
    if args.action == "register":
        print("registered block types: " + ", ".join(register_blocks()))
        return EXIT_OK
    settings = load_fleet_config(args.config, {"repo": args.repo})
    github_name = args.github_block or settings.github_block or "fleet-github"
    agent_name = args.agent_block or settings.agent_block or "fleet-agent"
    saved = save_blocks_from_env(settings, os.environ, github_name, agent_name, args.overwrite)
    print("saved blocks: " + ", ".join(saved))
    print(f"use them with `github_block: {github_name}` and `agent_block: {agent_name}` in "
          "the fleet settings")  # fmt: skip
    return EXIT_OK


def check_pool_ready() -> None:
    """The resolve-issue deployment, its work pool and a live worker, before any dispatch."""
    from prefect import get_client
    from prefect.client.schemas.objects import WorkerStatus
    from prefect.exceptions import ObjectNotFound

    from flows.fleet.dispatch import RESOLVE_DEPLOYMENT
    from flows.fleet.flow import read_deployment

    with get_client(sync_client=True) as client:
        deployment = read_deployment(client, RESOLVE_DEPLOYMENT)
        pool_name = deployment.work_pool_name
        if pool_name is None:
            return  # a served deployment (no pool): the process serving it runs it
        try:
            client.read_work_pool(pool_name)
        except ObjectNotFound:
            raise ConfigError(
                "Prefect server", "work pool", f"{pool_name!r} (of deployment "
                f"{RESOLVE_DEPLOYMENT!r}) does not exist: create it with "
                f"`python -m flows.deploy init --pool {pool_name}`",
            ) from None  # fmt: skip
        workers = client.read_workers_for_work_pool(pool_name)
    if not any(worker.status == WorkerStatus.ONLINE for worker in workers):
        print(f"warning: no worker is polling work pool {pool_name!r}; runs wait until one "
              f"starts: `prefect worker start --pool {pool_name}`", file=sys.stderr)  # fmt: skip


@contextlib.contextmanager
def leader_run(title: str, verbose: bool) -> Iterator[bool]:
    """Everything around in-process leader runs: the API (a local server when none is
    configured), the leader session, quiet Prefect logs and the live status board.

    Yields True when a local server was started for these runs."""
    from flows.leader import observing
    from flows.status import StatusBoard

    with (
        prefect_api() as started_server,
        _prefect.leader_session(),
        _prefect.quiet_run_logs(not verbose),
        StatusBoard(title) as board,
        observing(board),
    ):
        yield started_server


def finished_report(state: Any, started_server: bool) -> Report:
    """The report a leader flow returned; with a temporary server, wait until the server
    has recorded its task runs, so nothing is lost when it stops."""
    report = _prefect.state_result(state)
    assert isinstance(report, Report)
    if started_server and report.flow_run_id:
        ran = sum(1 for task in report.tasks if task.worker) + (report.setup.status != "none")
        _prefect.wait_until_recorded(UUID(report.flow_run_id), ran)
    return report


@contextlib.contextmanager
def prefect_api() -> Iterator[bool]:
    """Use the configured Prefect API, or start a local server for this run.

    Yields True when a server was started here (it stops when the run ends).
    """
    if _prefect.api_configured():
        _prefect.check_api_reachable()
        try:
            yield False
        finally:
            _prefect.drain_prefect_workers()  # sent before exit, without Prefect's warnings
        return
    print("No PREFECT_API_URL set: starting a local Prefect server for this run...", flush=True)
    with _prefect.local_server() as url:
        print(f"Prefect UI (while this run lasts): {url}", flush=True)
        yield True


def print_summary(report: Report, report_dir: Path, temporary_ui: bool) -> None:
    s = report.summary
    print()
    print(
        f"{'✅' if report.ok else '❌'} {report.kind} {report.name}: {s.succeeded}/{s.total} "
        f"succeeded, {s.failed} failed, {s.timed_out} timed out, {s.skipped} skipped "
        f"in {report.wall_s:.1f}s (speedup {s.speedup:.2f}x, efficiency {s.efficiency:.0%})"
    )
    setup = report.setup
    if setup.status != "none" and report.kind == "fleet":  # its setup: the shared mirror
        done = "updated" if setup.cache_hit else "created"
        outcome = done if setup.status == "succeeded" else setup.status
        print(f"   mirror: {outcome}, {setup.duration_s:.2f}s ({setup.cache_dir})")
    elif setup.status != "none":
        hit = "cache hit" if setup.cache_hit else "cache miss"
        print(f"   setup: {setup.status}, {hit}, {setup.duration_s:.2f}s (key {setup.key})")
    if setup.status == "failed":
        print("   setup log tail:\n" + _indent(setup.log_tail))
    if s.cost_usd is not None:
        print(f"   cost: ${s.cost_usd:.4f}")
    for task in report.tasks:
        pull_request = getattr(task, "pull_request", None)
        if pull_request:
            print(f"   {task.name}: {pull_request}")
        if task.failed:
            print(f"   {task.name} {task.status}; log tail:\n" + _indent(task.log_tail, 8))
    print(f"   report: {report_dir / 'report.md'} and report.json")
    url = _prefect.flow_run_url(report.flow_run_id)
    if url and not temporary_ui:
        print(f"   Prefect UI: {url}")
    if temporary_ui:
        print(
            "   history is kept in the Prefect database: run `prefect server start` and open "
            f"{_prefect.DEFAULT_UI_URL} to browse it"
        )


def print_report_written(report_dir: Path, since: float) -> None:
    """Where an interrupted run left its report, if it got to write one."""
    report = report_dir / "report.json"
    with contextlib.suppress(OSError):
        if report.stat().st_mtime >= since:
            print(f"report of what ran: {report_dir / 'report.md'} and report.json", flush=True)


def _indent(text: str, lines: int = 15) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
