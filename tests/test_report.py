"""report.md: what the markdown report renders."""

from __future__ import annotations

from datetime import UTC, datetime

from flows.report import Report, SetupSummary, UnitResult, render_markdown, summarize


def test_a_log_tail_with_a_code_fence_stays_inside_its_block() -> None:
    """report.md quotes a failed task's log in a fence; the log's own fences must not
    close it (the rest would render as markdown)."""
    tail = "```\n# not a heading\n````\n| a | b |"
    failed = UnitResult(name="t", priority=1, status="failed", log_tail=tail, worker="w1")
    now = datetime.now(UTC)
    report = Report(kind="pipeline", name="x", flow_run_id=None, started_at=now, ended_at=now,
                    wall_s=1.0, summary=summarize([failed], [], 1.0),
                    setup=SetupSummary(cache_hit=False, duration_s=0.0, status="none"),
                    tiers=[], tasks=[failed])  # fmt: skip
    markdown = render_markdown(report)
    block = markdown.split("### t (failed)\n\n", 1)[1]
    fence = block.splitlines()[0]
    assert fence == "`````"
    assert block.split(fence + "\n", 1)[1].split("\n" + fence)[0] == tail
