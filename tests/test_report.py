"""report.md: what the markdown report renders."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime

from prefect.states import get_state_exception

from flows._prefect import state_result
from flows.leader import report_state
from flows.report import (
    Report,
    RunFailed,
    SetupSummary,
    UnitResult,
    render_markdown,
    summarize,
)


def report_of(result: UnitResult) -> Report:
    """The report of a run of one unit, without setup."""
    now = datetime.now(UTC)
    return Report(kind="pipeline", name="x", flow_run_id=None, started_at=now, ended_at=now,
                  wall_s=1.0, summary=summarize([result], [], 1.0),
                  setup=SetupSummary(cache_hit=False, duration_s=0.0, status="none"),
                  tiers=[], tasks=[result])  # fmt: skip


def test_a_log_tail_with_a_code_fence_stays_inside_its_block() -> None:
    """report.md quotes a failed task's log in a fence; the log's own fences must not
    close it (the rest would render as markdown)."""
    tail = "```\n# not a heading\n````\n| a | b |"
    failed = UnitResult(name="t", priority=1, status="failed", log_tail=tail, worker="w1")
    report = report_of(failed)
    markdown = render_markdown(report)
    block = markdown.split("### t (failed)\n\n", 1)[1]
    fence = block.splitlines()[0]
    assert fence == "`````"
    assert block.split(fence + "\n", 1)[1].split("\n" + fence)[0] == tail


def test_a_failed_runs_state_resolves_into_an_exception_that_carries_its_report() -> None:
    """A deployment's engine raises the exception of its run's Failed state: the state's
    data must resolve into one (a Report did not), and still give the report back."""
    failed = UnitResult(name="t", priority=1, status="failed", worker="w1")
    report = report_of(failed)
    state = report_state(report)
    error = get_state_exception(state)
    assert isinstance(error, RunFailed) and str(error) == "0/1 succeeded, 1 failed"
    assert pickle.loads(pickle.dumps(error)).report == report  # into result storage and back
    assert state_result(state) == report


def test_a_run_with_skipped_tasks_is_not_headlined_as_all_succeeded() -> None:
    skipped = UnitResult(name="audit", priority=2, status="skipped", log_tail="offline")
    report = report_of(skipped)
    assert report.ok and "**✅ no task failed (1 skipped)**" in render_markdown(report)
