"""Command line: `python -m flows.deploy <command>`.

    pipeline   run a pipeline config (the CI job)

Exit codes: 0 all units succeeded, 1 some failed, 2 bad input (config or arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from flows import _prefect
from flows.config import ConfigError
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run_pipeline_command(args: argparse.Namespace) -> int:
    from flows.leader import observing
    from flows.pipeline.flow import pipeline, pipeline_plan
    from flows.pipeline.matrix import describe_matrix
    from flows.status import StatusBoard

    config_path = args.config.resolve()
    matrix, plan = pipeline_plan(config_path, args.report_dir, args.max_parallel)
    print(describe_matrix(matrix), flush=True)
    if args.dry_run:
        return EXIT_OK
    print(flush=True)
    with (
        prefect_api() as started_server,
        _prefect.leader_session(),
        _prefect.quiet_run_logs(not args.verbose),
        StatusBoard(f"pipeline {matrix.name}") as board,
        observing(board),
    ):
        state = pipeline(
            config_path=str(config_path),
            report_dir=str(plan.report_dir),
            max_parallel=args.max_parallel,
            return_state=True,
        )
        report = _prefect.state_result(state)
        if started_server and report.flow_run_id:
            ran = sum(1 for task in report.tasks if task.worker) + (report.setup.status != "none")
            _prefect.wait_until_recorded(report.flow_run_id, ran)
    print_summary(report, plan.report_dir, temporary_ui=started_server)
    return EXIT_OK if report.ok else EXIT_FAILED


@contextlib.contextmanager
def prefect_api() -> Iterator[bool]:
    """Use the configured Prefect API, or start a local server for this run.

    Yields True when a server was started here (it stops when the run ends).
    """
    if _prefect.api_configured():
        yield False
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
    if setup.status != "none":
        hit = "cache hit" if setup.cache_hit else "cache miss"
        print(f"   setup: {setup.status}, {hit}, {setup.duration_s:.1f}s (key {setup.key})")
        if setup.status == "failed":
            print("   setup log tail:\n" + _indent(setup.log_tail))
    for task in report.tasks:
        if task.failed:
            print(f"   {task.name} {task.status}; log tail:\n" + _indent(task.log_tail, 8))
    print(f"   report: {report_dir / 'report.md'} and report.json")
    url = _prefect.flow_run_url(report.flow_run_id)
    if url and not temporary_ui:
        print(f"   Prefect UI: {url}")
    if temporary_ui:
        print(
            "   history is kept in the Prefect database: run `prefect server start` and open "
            "http://127.0.0.1:4200 to browse it"
        )


def _indent(text: str, lines: int = 15) -> str:
    return "\n".join(f"      {line}" for line in text.splitlines()[-lines:])


if __name__ == "__main__":
    sys.exit(main())
