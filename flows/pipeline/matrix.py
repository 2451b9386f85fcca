"""The task matrix: config tasks with their defaults applied, grouped into tiers."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from flows.config import Command, PipelineConfig, resolve_workdir
from flows.scheduler import Tier, build_tiers


@dataclass(frozen=True)
class TaskSpec:
    """One matrix entry: everything a worker needs to run one task."""

    name: str
    priority: int
    run: Command
    timeout: float
    retries: int
    retry_delay: float
    continue_on_error: bool
    skip_exit_codes: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    artifacts: tuple[str, ...] = ()

    @property
    def command_text(self) -> str:
        return self.run if isinstance(self.run, str) else shlex.join(self.run)


@dataclass(frozen=True)
class Matrix:
    name: str
    workdir: Path
    tiers: list[Tier[TaskSpec]]
    max_parallel: int
    fail_fast: bool

    @property
    def tasks(self) -> list[TaskSpec]:
        return [task for tier in self.tiers for task in tier.units]


def build_matrix(
    config: PipelineConfig, config_path: Path, max_parallel: int | None = None
) -> Matrix:
    defaults = config.defaults
    specs = [
        TaskSpec(
            name=task.name,
            priority=task.priority,
            run=task.run,
            timeout=task.timeout if task.timeout is not None else defaults.timeout,
            retries=task.retries if task.retries is not None else defaults.retries,
            retry_delay=task.retry_delay if task.retry_delay is not None else defaults.retry_delay,
            continue_on_error=(
                task.continue_on_error
                if task.continue_on_error is not None
                else defaults.continue_on_error
            ),
            skip_exit_codes=tuple(
                task.skip_exit_codes
                if task.skip_exit_codes is not None
                else defaults.skip_exit_codes
            ),
            env=dict(task.env),
            artifacts=tuple(task.artifacts),
        )
        for task in config.tasks
    ]
    return Matrix(
        name=config.name,
        workdir=resolve_workdir(config_path, config),
        tiers=build_tiers(specs, dict(config.tiers)),
        max_parallel=max_parallel or config.scaling.max_parallel,
        fail_fast=config.fail_fast,
    )


def describe_matrix(matrix: Matrix) -> str:
    """The matrix as text, for --dry-run and the start of a run."""
    lines = [
        f"Pipeline {matrix.name}: {_count(len(matrix.tasks), 'task')} in "
        f"{_count(len(matrix.tiers), 'tier')}, "
        f"max_parallel {matrix.max_parallel}, fail_fast {str(matrix.fail_fast).lower()}",
        f"workdir {matrix.workdir}",
    ]
    for tier in matrix.tiers:
        slots = min(matrix.max_parallel, len(tier.units))
        lines.append(
            f"\nTier {tier.priority} ({tier.name}): {_count(len(tier.units), 'task')} on "
            f"{_count(slots, 'worker slot')}"
        )
        width = max(len(t.name) for t in tier.units)
        for task in tier.units:
            extras = [f"timeout {task.timeout:g}s"]
            if task.retries:
                extras.append(f"retries {task.retries}")
            if not task.continue_on_error:
                extras.append("stops later tiers on failure")
            lines.append(f"  {task.name:<{width}}  {task.command_text}  ({', '.join(extras)})")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")
