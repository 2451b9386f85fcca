"""What a leader run produces: one result per work unit, metrics, and the report in its
three forms (report.json, report.md, and the rows of Prefect table artifacts)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["succeeded", "failed", "timed_out", "skipped"]
STATUS_ICONS: dict[str, str] = {
    "succeeded": "✅",
    "failed": "❌",
    "timed_out": "⏱️",
    "skipped": "⏭️",
}


class ArtifactFile(BaseModel):
    path: str
    bytes: int


class UnitResult(BaseModel):
    """The outcome of one work unit (a pipeline task; the fleet adds its own fields)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    priority: int
    status: Status
    attempts: int = 0
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_s: float = 0.0
    exit_code: int | None = None
    worker: str | None = None
    peak_rss_mb: float | None = None
    artifacts: list[ArtifactFile] = Field(default_factory=list)
    log_tail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("failed", "timed_out")

    def __repr__(self) -> str:  # Prefect logs states with their data: keep that short
        return f"{self.__class__.__name__}({self.name}: {self.status})"


class SetupSummary(BaseModel):
    cache_hit: bool
    duration_s: float
    status: Literal["succeeded", "failed", "none"] = "succeeded"
    key: str | None = None
    cache_dir: str | None = None
    log_tail: str = ""


class TierTiming(BaseModel):
    priority: int
    name: str
    tasks: int
    slots: int
    wall_s: float


class Summary(BaseModel):
    total: int
    succeeded: int
    failed: int
    timed_out: int
    skipped: int
    success_rate: float
    throughput_per_min: float
    speedup: float
    efficiency: float
    cost_usd: float | None = None  # the fleet's model spend; None for the pipeline


class Report(BaseModel):
    kind: str
    name: str
    flow_run_id: str | None
    started_at: datetime
    ended_at: datetime
    wall_s: float
    summary: Summary
    setup: SetupSummary
    tiers: list[TierTiming]
    tasks: Sequence[UnitResult]
    interrupted: str | None = None  # e.g. "interrupted (SIGTERM)": the run was cut short

    @property
    def ok(self) -> bool:
        return (
            self.setup.status != "failed"
            and self.interrupted is None
            and not any(t.failed for t in self.tasks)
        )


def summarize(results: Sequence[UnitResult], tiers: Sequence[TierTiming], wall_s: float) -> Summary:
    """Counts and parallel-efficiency metrics.

    speedup = sum of task durations / wall time of the tiers.
    efficiency = speedup / available parallelism, where the available parallelism is the
    time-weighted number of worker slots the tiers could use (min(max_parallel, tier size)).
    """
    counts = {status: 0 for status in STATUS_ICONS}
    for result in results:
        counts[result.status] += 1
    ran = len(results) - counts["skipped"]
    tiers_wall = sum(t.wall_s for t in tiers)
    busy = sum(r.duration_s for r in results)
    speedup = busy / tiers_wall if tiers_wall > 0 else 0.0
    slot_seconds = sum(t.slots * t.wall_s for t in tiers)
    available = slot_seconds / tiers_wall if tiers_wall > 0 else 0.0
    return Summary(
        total=len(results),
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        timed_out=counts["timed_out"],
        skipped=counts["skipped"],
        success_rate=round(counts["succeeded"] / ran, 4) if ran else 0.0,
        throughput_per_min=round(ran / wall_s * 60, 2) if wall_s > 0 else 0.0,
        speedup=round(speedup, 3),
        efficiency=round(speedup / available, 3) if available > 0 else 0.0,
        cost_usd=_total_cost(results),
    )


def _total_cost(results: Sequence[UnitResult]) -> float | None:
    costs = [getattr(r, "cost_usd", None) for r in results]
    known = [c for c in costs if c is not None]
    return round(sum(known), 6) if known else None


class RunFailed(Exception):
    """The data of a failed run's state: its report, in an exception. Prefect turns the
    data of a Failed state into the exception a deployment's run raises, and refuses
    anything else (a Report: "cannot be resolved into an exception")."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message, report)  # both in args: it pickles into result storage
        self.report = report

    def __str__(self) -> str:
        return str(self.args[0])


def write_report(
    report: Report, report_dir: Path, tier_names: Mapping[int, str] | None = None
) -> tuple[Path, Path]:
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path = report_dir / "report.json"
    md_path = report_dir / "report.md"
    _replace_text(json_path, json.dumps(report_json(report), indent=2) + "\n")
    _replace_text(md_path, render_markdown(report, tier_names))
    return json_path, md_path


def _replace_text(path: Path, text: str) -> None:
    """Write a new file and rename it over `path`: a reader (or a run stopped halfway)
    never sees half a report."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def report_json(report: Report) -> dict[str, object]:
    data = report.model_dump(mode="json")
    data["tasks"] = [t.model_dump(mode="json") for t in report.tasks]  # keep subclass fields
    if report.summary.cost_usd is None:
        del data["summary"]["cost_usd"]
    return data


def task_row(result: UnitResult, command: str = "") -> dict[str, object]:
    """One row of a tier table artifact."""
    row: dict[str, object] = {
        "task": result.name,
        "status": f"{STATUS_ICONS[result.status]} {result.status}",
        "worker": result.worker or "",
        "attempts": result.attempts,
        "exit_code": "" if result.exit_code is None else result.exit_code,
        "duration_s": round(result.duration_s, 2),
    }
    if command:
        row["command"] = command
    row["log_tail"] = _last_lines(result.log_tail, 5)
    return row


def render_markdown(report: Report, tier_names: Mapping[int, str] | None = None) -> str:
    """The report as markdown, one table per priority. `tier_names` names the priorities
    when the run did not keep them apart (the fleet runs all of them as one queue)."""
    s = report.summary
    if report.interrupted:
        verdict = f"⛔ {report.interrupted}: the run was stopped"
    elif not report.ok:
        verdict = "❌ some tasks failed"
    elif s.skipped:
        verdict = f"✅ no task failed ({s.skipped} skipped)"
    else:
        verdict = "✅ all tasks succeeded"
    lines = [
        f"# {report.kind.capitalize()} report: {report.name}",
        "",
        f"**{verdict}** · {s.succeeded}/{s.total} succeeded, {s.failed} failed, "
        f"{s.timed_out} timed out, {s.skipped} skipped · wall {report.wall_s:.1f}s",
        "",
        "| metric | value |",
        "|---|---|",
        f"| success rate | {s.success_rate:.0%} |",
        f"| throughput | {s.throughput_per_min:.1f} tasks/min |",
        f"| speedup | {s.speedup:.2f}x |",
        f"| efficiency | {s.efficiency:.0%} |",
        *([f"| cost | ${s.cost_usd:.4f} |"] if s.cost_usd is not None else []),
        f"| setup | {_setup_text(report.setup)} |",
        "",
    ]
    names = {tier.priority: tier.name for tier in report.tiers} | dict(tier_names or {})
    for tier in report.tiers:
        lines.append(
            f"- {tier.name}: {tier.tasks} tasks on {tier.slots} workers, {tier.wall_s:.1f}s"
        )
    lines.append("")
    for priority in sorted({t.priority for t in report.tasks}):
        name = names.get(priority, f"priority-{priority}")
        lines += [
            f"## Tier {priority}: {name}",
            "",
            "| task | status | worker | attempts | exit | duration |",
            "|---|---|---|---|---|---|",
        ]
        for r in (t for t in report.tasks if t.priority == priority):
            exit_code = "" if r.exit_code is None else str(r.exit_code)
            lines.append(
                f"| {r.name} | {STATUS_ICONS[r.status]} {r.status} | {r.worker or ''} | "
                f"{r.attempts} | {exit_code} | {r.duration_s:.2f}s |"
            )
        lines.append("")
    failures = [t for t in report.tasks if t.failed]
    if failures:
        lines += ["## Failures", ""]
        for r in failures:
            tail = _last_lines(r.log_tail, 15)
            fence = _fence_for(tail)
            lines += [f"### {r.name} ({r.status})", "", fence, tail, fence]
            lines.append("")
    return "\n".join(lines)


def _fence_for(text: str) -> str:
    """A code fence longer than any run of backticks in `text`, so none closes it early."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _setup_text(setup: SetupSummary) -> str:
    if setup.status == "none":
        return "none"
    if setup.status == "failed":
        return f"❌ failed after {setup.duration_s:.1f}s"
    state = "cache hit" if setup.cache_hit else "cache miss, installed"
    return f"{state} ({setup.duration_s:.1f}s)"


def _last_lines(text: str, count: int) -> str:
    return "\n".join(text.splitlines()[-count:])
