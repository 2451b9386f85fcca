"""The pipeline flow: a YAML config of CI tasks run by the generic leader."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from prefect import State, flow

from flows.config import load_config, resolve_folder
from flows.leader import LeaderPlan, lead, report_state
from flows.leftovers import ending_leftovers, marked, new_marker
from flows.pipeline.matrix import Matrix, TaskSpec, build_matrix
from flows.pipeline.setup import SetupPlan, cache_env, cache_in_use, plan_setup, run_setup
from flows.pipeline.worker import WorkerContext, crashed_result, run_task, skipped_result
from flows.report import UnitResult
from flows.rss import RssSampler


def default_report_dir(workdir: Path) -> Path:
    return workdir / ".pipeline" / "report"


def pipeline_plan(
    config_path: Path,
    report_dir: Path | None = None,
    max_parallel: int | None = None,
    cache_root: Path | None = None,
    report_dir_given_as: tuple[str, str] = ("command line", "--report-dir"),
) -> tuple[Matrix, LeaderPlan[TaskSpec, UnitResult]]:
    """Validate a config and turn it into a leader plan; raises ConfigError (naming
    `report_dir_given_as`, source and name, for an unusable `report_dir`)."""
    config = load_config(config_path)
    matrix = build_matrix(config, config_path, max_parallel)
    setup = plan_setup(config, config_path, matrix.workdir, cache_root)
    if report_dir is not None:
        report_dir = resolve_folder(report_dir, *report_dir_given_as)
    else:
        report_dir = resolve_folder(default_report_dir(matrix.workdir), config_path, "workdir")
    marker = new_marker()  # what the run's commands leave running is ended with the run
    ctx = WorkerContext(
        workdir=matrix.workdir,
        env=marked(cache_env(setup, os.environ), marker),
        report_dir=report_dir,
        rss=RssSampler(),
    )
    setup_log = ctx.log_dir / "setup.log"
    plan: LeaderPlan[TaskSpec, UnitResult] = LeaderPlan(
        kind="pipeline",
        name=matrix.name,
        tiers=matrix.tiers,
        work=lambda spec, worker: run_task(spec, worker, ctx),
        skipped=skipped_result,
        crashed=crashed_result,
        max_parallel=matrix.max_parallel,
        report_dir=report_dir,
        fail_fast=matrix.fail_fast,
        setup=partial(run_setup, setup, matrix.workdir, ctx.env, setup_log, ctx.stop)
        if setup
        else None,
        describe=lambda spec: spec.command_text,
        notifications=config.notifications,
        scope=lambda: _scope(setup, marker),
        stop_units=ctx.stop.stop,
    )
    return matrix, plan


@contextmanager
def _scope(setup: SetupPlan | None, marker: str) -> Iterator[None]:
    """The setup cache held from the setup to the last task, and beyond, until what the
    run's commands left running (which may use it) is ended."""
    with cache_in_use(setup), ending_leftovers(marker):
        yield


# No flow_run_name: naming a run costs an extra API call per run. No result persistence:
# the report is written to files and artifacts.
@flow(name="pipeline", persist_result=False)
def pipeline(
    config_path: str,
    report_dir: str | None = None,
    max_parallel: int | None = None,
    cache_root: str | None = None,
) -> State[Any]:
    """Run a pipeline config: setup once (cached), then its tiers, then the report."""
    _, plan = pipeline_plan(
        Path(config_path),
        Path(report_dir) if report_dir else None,
        max_parallel,
        Path(cache_root) if cache_root else None,
        report_dir_given_as=("flow parameters", "report_dir"),
    )
    return report_state(lead(plan))
