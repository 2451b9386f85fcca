"""Serve this project's deployments from one process, without a work pool:

    python -m deployments.serve [--config examples/fleet-simulated.yml] [--interval 300]
                                [--cron EXPR] [--limit 3]

`issue-poller` runs on its schedule, `resolve-issue` runs (one per issue) and `pipeline`
runs on demand; all execute in this process, at most `--limit` at a time. Needs a running
Prefect server (`prefect server start`, PREFECT_API_URL): the ephemeral one has no scheduler.

The deployments are named `<flow>-served` (`issue-poller/issue-poller-served`, ...): they live
beside prefect.yaml's work-pool deployments, which serving would otherwise take over (and
leave paused, without their pull steps, when it stops).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows.config import ConfigError
from flows.deploy import EXIT_BAD_INPUT, positive_int, seconds

DEFAULT_CONFIG = "examples/fleet-simulated.yml"
DEFAULT_PIPELINE = "examples/multi-agent-config.yml"
SUFFIX = "-served"
MIN_INTERVAL_S, MAX_INTERVAL_S = 1.0, 86_400.0


def schedule_arguments(interval: float | None, cron: str | None) -> dict[str, Any]:
    """`to_deployment` keywords for the poller's schedule; ConfigError when it is invalid."""
    from prefect.client.schemas.schedules import CronSchedule

    if cron is not None:
        try:
            CronSchedule(cron=cron)
        except ValueError:
            problem = f"not a valid cron expression: {cron!r}"
            raise ConfigError("command line", "--cron", problem) from None
        return {"cron": cron}
    seconds = 300.0 if interval is None else interval
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        problem = f"must be {MIN_INTERVAL_S:g} to {MAX_INTERVAL_S:g} seconds, got {seconds:g}"
        raise ConfigError("command line", "--interval", problem)
    return {"interval": seconds}


def validate_configs(fleet_config: Path, pipeline_config: Path) -> None:
    """Both configs, checked once at start (not once per scheduled run); ConfigError."""
    from flows.config import load_config
    from flows.fleet.config import load_fleet_config

    load_fleet_config(fleet_config, {})
    load_config(pipeline_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="fleet YAML for the runs (default: %(default)s)")  # fmt: skip
    parser.add_argument("--pipeline-config", default=DEFAULT_PIPELINE,
                        help="the pipeline deployment's YAML (default: %(default)s)")  # fmt: skip
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument("--interval", type=seconds, help="poll every N seconds (default 300)")
    schedule.add_argument("--cron", help="poll on a cron schedule instead, e.g. '*/5 * * * *'")
    parser.add_argument("--limit", type=positive_int, default=3,
                        help="runs at once in this process: the fleet size")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        schedule = schedule_arguments(args.interval, args.cron)
        for option, path in (
            ("--config", args.config),
            ("--pipeline-config", args.pipeline_config),
        ):
            if not Path(path).is_file():
                raise ConfigError("command line", option, f"no such file: {path}")
        validate_configs(Path(args.config), Path(args.pipeline_config))
        serve_all(args.config, args.pipeline_config, schedule, args.limit)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def serve_all(config: str, pipeline_config: str, schedule: dict[str, Any], limit: int) -> None:
    from prefect import serve
    from prefect.deployments.runner import RunnerDeployment

    from flows._prefect import require_api
    from flows.fleet.flow import issue_poller, resolve_issue_run
    from flows.pipeline.flow import pipeline
    from flows.secrecy import make_undumpable

    # The runs' processes are its children, their agents' commands its grandchildren: none
    # may read the tokens in this process's environment through /proc.
    make_undumpable()
    require_api("serving deployments")
    resolver = resolve_issue_run.name + SUFFIX
    poller_parameters = {
        "config_path": config,
        "deployment": f"{resolve_issue_run.name}/{resolver}",
    }
    deployments = [
        issue_poller.to_deployment(
            name=issue_poller.name + SUFFIX, parameters=poller_parameters, **schedule
        ),
        resolve_issue_run.to_deployment(name=resolver, parameters={"config_path": config}),
        pipeline.to_deployment(
            name=pipeline.name + SUFFIX, parameters={"config_path": pipeline_config}
        ),
    ]
    serve(*[d for d in deployments if isinstance(d, RunnerDeployment)], limit=limit)


if __name__ == "__main__":
    sys.exit(main())
