"""One issue from claim to pull request (`resolve_issue`), without Prefect: what a worker
leaves behind when something it did not expect breaks."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flows.fleet.config import FleetConfig
from flows.fleet.connection import fleet_context, open_connection
from flows.fleet.models import Issue
from flows.fleet.tracker import LocalTracker
from flows.fleet.worker import IssueUnit, resolve_issue
from flows.fleet.workspace import Mirror


class BrokenModel:
    """A model client with a bug of its own: not an API error the agent loop knows."""

    def complete(self, **request: Any) -> Any:
        raise OverflowError("timestamp out of range for platform time_t")


def test_an_unexpected_error_fails_the_issue_and_labels_it(tmp_path: Path) -> None:
    config = FleetConfig(mode="test", workspace=str(tmp_path / "ws"), mock_issues=1)
    connection = open_connection(config, None)
    Mirror(Path(config.workspace).resolve(), connection.clone_url).ensure()
    ctx = fleet_context(connection, tmp_path / "report", "tests:1", lambda *beat: None)
    ctx = dataclasses.replace(ctx, model_for=lambda issue: BrokenModel())
    issue: Issue = connection.tracker.list_ready()[0]

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert result.status == "failed"
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker)
    after = tracker.get(issue.number)
    labels = connection.settings.labels
    assert labels.failed in after.labels and labels.in_progress not in after.labels
    comment = tracker.comments(issue.number)[-1]
    assert "internal error (OverflowError)" in comment
    assert "time_t" not in comment  # the details stay in the fleet's own log
    log = (tmp_path / "report" / "logs" / f"{issue.name}.log").read_text()
    assert "Traceback" in log and "timestamp out of range" in log
