"""A pipeline worker: run one matrix task with retries, then collect its artifacts."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flows.commands import CommandOutcome, RunStop, read_tail, run_command
from flows.config import MAX_RETRY_DELAY_SECONDS
from flows.pipeline.matrix import TaskSpec
from flows.report import ArtifactFile, Status, UnitResult
from flows.rss import RssSampler


@dataclass(frozen=True)
class WorkerContext:
    """What every worker of one run shares."""

    workdir: Path
    env: Mapping[str, str]
    report_dir: Path
    rss: RssSampler | None = None
    stop: RunStop = field(default_factory=RunStop)  # stops the run's commands
    sleep: Callable[[float], None] | None = None  # between retries; default: `stop.wait`

    @property
    def log_dir(self) -> Path:
        return self.report_dir / "logs"

    def pause(self, seconds: float) -> None:
        (self.sleep or self.stop.wait)(seconds)


def run_task(spec: TaskSpec, worker: str, ctx: WorkerContext) -> UnitResult:
    """Run `spec` up to 1 + retries times, waiting retry_delay (doubling) in between; no
    retry once the run is stopped."""
    log_path = ctx.log_dir / f"{spec.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    attempts = spec.retries + 1
    delay = spec.retry_delay
    outcomes: list[CommandOutcome] = []
    for attempt in range(1, attempts + 1):
        _log(
            log_path,
            f"── {spec.name} attempt {attempt}/{attempts} on {worker}: {spec.command_text}",
        )
        env = {**ctx.env, **spec.env, "PIPELINE_TASK": spec.name, "PIPELINE_WORKER": worker,
               "PIPELINE_ATTEMPT": str(attempt)}  # fmt: skip
        outcome = run_command(
            spec.run,
            cwd=ctx.workdir,
            env=env,
            timeout=spec.timeout,
            log_path=log_path,
            rss=ctx.rss,
            stop=ctx.stop,
        )
        if outcome.interrupted and outcome.exit_code is None:  # stopped before it started
            if not outcomes:
                return skipped_result(spec, ctx.stop.reason or "the run was stopped")
            _log(log_path, f"── not retried: {ctx.stop.reason}")
            break
        outcomes.append(outcome)
        status = _status(spec, outcome)
        if (status != "failed" and status != "timed_out") or outcome.interrupted:
            break
        if attempt < attempts:
            _log(log_path, f"── {status.replace('_', ' ')}; retrying in {delay:g}s")
            ctx.pause(delay)
            if ctx.stop.reason is not None:
                _log(log_path, f"── not retried: {ctx.stop.reason}")
                break
            delay = min(delay * 2, MAX_RETRY_DELAY_SECONDS)  # unbounded doubling overflows sleep()
    artifacts: list[ArtifactFile] = []
    if status == "succeeded" and spec.artifacts:
        artifacts, missing, refused = collect_artifacts(spec, ctx)
        if missing:
            _log(log_path, f"── artifact pattern(s) matched no file: {', '.join(missing)}")
            status = "failed"
        if refused:
            _log(log_path, f"── artifact(s) outside the workdir refused: {', '.join(refused)}")
            status = "failed"
    return UnitResult(
        name=spec.name,
        priority=spec.priority,
        status=status,
        attempts=len(outcomes),
        started_at=outcomes[0].started_at,
        ended_at=outcomes[-1].ended_at,
        duration_s=round((outcomes[-1].ended_at - outcomes[0].started_at).total_seconds(), 4),
        exit_code=outcomes[-1].exit_code,
        worker=worker,
        peak_rss_mb=max((o.peak_rss_mb or 0.0 for o in outcomes), default=None),
        artifacts=artifacts,
        log_tail=read_tail(log_path),
    )


def collect_artifacts(
    spec: TaskSpec, ctx: WorkerContext
) -> tuple[list[ArtifactFile], list[str], list[str]]:
    """Copy files matching the task's globs into <report_dir>/artifacts/<task>/.

    Returns the copies, the patterns that matched nothing, and the patterns or matches
    refused because they lead outside the workdir or the task's artifacts folder (the
    config refuses such patterns already; a symlink in the workdir can still lead out).
    """
    collected: list[ArtifactFile] = []
    missing: list[str] = []
    refused: list[str] = []
    workdir = ctx.workdir.resolve()
    report_dir = ctx.report_dir.resolve()
    target_root = report_dir / "artifacts" / spec.name
    for pattern in spec.artifacts:
        if Path(pattern).is_absolute():
            refused.append(pattern)
            continue
        matches = sorted(p for p in workdir.glob(pattern) if p.is_file())
        if not matches:
            missing.append(pattern)
        for source in matches:
            target = target_root / source.relative_to(workdir)
            if not _inside(source, workdir) or not _inside(target, target_root):
                refused.append(str(source))
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
            collected.append(
                ArtifactFile(path=str(target.relative_to(report_dir)), bytes=target.stat().st_size)
            )
    return collected, missing, refused


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, with its symlinks and `..` resolved, is in `folder` (resolved)."""
    return path.resolve().is_relative_to(folder)


def skipped_result(spec: TaskSpec, reason: str) -> UnitResult:
    return UnitResult(
        name=spec.name, priority=spec.priority, status="skipped", log_tail=f"skipped: {reason}"
    )


def crashed_result(spec: TaskSpec, worker: str, error: BaseException) -> UnitResult:
    return UnitResult(
        name=spec.name,
        priority=spec.priority,
        status="failed",
        worker=worker,
        log_tail=f"worker crashed: {error.__class__.__name__}: {error}",
    )


def _status(spec: TaskSpec, outcome: CommandOutcome) -> Status:
    if outcome.interrupted:
        return "failed"
    if outcome.timed_out:
        return "timed_out"
    if outcome.exit_code == 0:
        return "succeeded"
    if outcome.exit_code in spec.skip_exit_codes:
        return "skipped"
    return "failed"


def _log(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as log:
        log.write(line + "\n")
