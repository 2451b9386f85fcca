"""The live status board: what each worker slot is doing, from the scheduler's events."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import Console

from flows.fleet.models import IssueResult
from flows.status import StatusBoard


@dataclass(frozen=True)
class Unit:
    name: str
    priority: int = 1
    continue_on_error: bool = True


def rendered(board: StatusBoard) -> str:
    console = Console(file=io.StringIO(), width=200)
    console.print(board.table())
    return console.file.getvalue()  # type: ignore[attr-defined, no-any-return]


def test_heartbeats_show_the_current_activity_and_the_cost_so_far() -> None:
    stream = io.StringIO()
    with StatusBoard("fleet", stream=stream, live=False) as board:
        board.unit_started(Unit("issue-7"), "worker-01")
        board.unit_heartbeat("worker-01", "issue-7: agent turn 3", 0.0421)
        board.unit_heartbeat("worker-09", "unknown worker: ignored", 1.0)
        table = rendered(board)
        assert "issue-7: agent turn 3" in table and "$0.04" in table and "working" in table
        assert "worker-09" not in table
        now = datetime.now(UTC)
        board.unit_finished(IssueResult(
            name="issue-7", priority=1, status="succeeded", attempts=1, started_at=now,
            ended_at=now, duration_s=1.0, worker="worker-01", issue=7, branch="b",
            cost_usd=0.05,
        ))  # fmt: skip
        board.unit_heartbeat("worker-01", "late beat of a finished unit", 9.0)
        table = rendered(board)
    assert "idle" in table and "late beat" not in table
    assert "$0.05" in table  # the finished unit's cost, not its last live figure added twice
    assert "issue-7" in stream.getvalue()  # one line per finished unit without a TTY
