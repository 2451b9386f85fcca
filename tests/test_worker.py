"""One issue from claim to pull request (`resolve_issue`), without Prefect: what a worker
leaves behind when something it did not expect breaks."""

from __future__ import annotations

import dataclasses
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flows.commands import RunStop
from flows.fleet.agent import AgentError, Model, ModelTurn, ScriptedModel
from flows.fleet.config import FleetConfig
from flows.fleet.connection import Connection, fleet_context, open_connection
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.models import Issue, IssueResult, Usage
from flows.fleet.testbed import remote_path
from flows.fleet.worker import CANCELLED, FleetContext, IssueUnit, failure_comment, resolve_issue
from flows.fleet.workspace import Mirror
from tests.conftest import wait_for_file, wait_until_gone


class BrokenModel:
    """A model client with a bug of its own: not an API error the agent loop knows."""

    def complete(self, **request: Any) -> Any:
        raise OverflowError("timestamp out of range for platform time_t")


def one_issue_fleet(tmp_path: Path, models: Iterator[Model]) -> tuple[Connection, FleetContext]:
    """A test-mode fleet with one mock issue whose agent attempts use `models` in turn."""
    config = FleetConfig(mode="test", workspace=str(tmp_path / "ws"), mock_issues=1)
    connection = open_connection(config, None)
    Mirror(Path(config.workspace).resolve(), connection.clone_url).ensure()
    ctx = fleet_context(connection, tmp_path / "report", "tests:1", lambda *beat: None)
    ctx = dataclasses.replace(ctx, model_for=lambda issue: next(models), sleep=lambda _: None)
    return connection, ctx


def test_an_unexpected_error_fails_the_issue_and_labels_it(tmp_path: Path) -> None:
    connection, ctx = one_issue_fleet(tmp_path, iter([BrokenModel()]))
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


def tool_turn(name: str, tool_input: dict[str, Any], block_id: str) -> ModelTurn:
    block = {"type": "tool_use", "id": block_id, "name": name, "input": tool_input}
    return ModelTurn([block], "tool_use", Usage(input_tokens=10))


def text_turn(text: str) -> ModelTurn:
    return ModelTurn([{"type": "text", "text": text}], "end_turn", Usage(output_tokens=5))


def test_a_retried_attempt_starts_from_the_workspace_the_first_one_found(tmp_path: Path) -> None:
    """The first attempt writes a scratch file, then the API stays overloaded; the pull
    request holds only what the second attempt did."""
    overloaded = AgentError("transient", "OverloadedError (HTTP 529)")
    scratch = {"path": "scratch.py", "content": "x\n"}
    fix = {"path": "changes/fix.md", "content": "# Fix\n"}
    first = ScriptedModel([tool_turn("write_file", scratch, "a"), overloaded])
    second = ScriptedModel([tool_turn("list_files", {}, "b"), tool_turn("write_file", fix, "c"),
                            text_turn("Added the fix.")])  # fmt: skip
    connection, ctx = one_issue_fleet(tmp_path, iter([first, second]))
    issue: Issue = connection.tracker.list_ready()[0]

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert result.status == "succeeded" and result.attempts == 2
    listing = second.calls[1]["messages"][-1]["content"][0]["content"]
    assert "scratch.py" not in listing
    pushed = pushed_files(connection, issue.branch)
    assert "changes/fix.md" in pushed and "scratch.py" not in pushed


def pushed_files(connection: Connection, branch: str) -> list[str]:
    return subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", branch],
        cwd=remote_path(Path(connection.settings.workspace).resolve()),
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.split()  # fmt: skip


def test_what_the_checks_keep_in_home_stays_out_of_the_pull_request(tmp_path: Path) -> None:
    """Tools keep caches and logs in HOME (~/.npm, ~/.cache): the checks' HOME is not the
    workspace, so none of that is committed."""
    checks = (
        'name: checks\ntasks:\n  - name: caches\n    priority: 1\n    run: mkdir -p "$HOME/.cache" '
        '&& echo log > "$HOME/.cache/debug.log" && echo "$HOME" > "$HOME/where"\n'
    )
    fix = {"path": "changes/fix.md", "content": "# Fix\n"}
    model = ScriptedModel([tool_turn("write_file", {"path": ".multi-agent.yml", "content": checks},
                                     "a"),
                           tool_turn("write_file", fix, "b"), text_turn("Fixed.")])  # fmt: skip
    connection, ctx = one_issue_fleet(tmp_path, iter([model]))
    issue: Issue = connection.tracker.list_ready()[0]

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert result.status == "succeeded", result.log_tail
    assert not (tmp_path / "ws" / "worker-01").exists()  # cleaned up, its worker's folder too
    assert sorted(pushed_files(connection, issue.branch)) == [
        ".multi-agent.yml",
        "README.md",
        "changes/fix.md",
    ]


def test_the_pull_request_tells_what_every_round_did(tmp_path: Path) -> None:
    """A revision's summary describes its fix alone: the description keeps the first
    round's account of the change too."""
    untitled = {"path": "changes/limiter.md", "content": "rate limiter\n"}
    titled = {"path": "changes/limiter.md", "content": "# Rate limiter\n"}
    first = ScriptedModel([tool_turn("write_file", untitled, "a"),
                           text_turn("Added a token-bucket rate limiter.")])  # fmt: skip
    revision = ScriptedModel([tool_turn("write_file", titled, "b"),
                              text_turn("Gave the note a title.")])  # fmt: skip
    connection, ctx = one_issue_fleet(tmp_path, iter([first, revision]))
    issue: Issue = connection.tracker.list_ready()[0]

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert result.status == "succeeded"
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker)
    [pull] = tracker.pulls()
    assert "Added a token-bucket rate limiter.\n\nAfter the checks failed: Gave the note a " in (
        pull.body
    )


class StopsTheRunOnItsLastCall:
    """A model that makes `turns`, then ends its turn, the run being stopped during that
    last call (Ctrl-C while the model writes its summary)."""

    def __init__(self, stop: RunStop, turns: list[ModelTurn]) -> None:
        self.stop, self.turns = stop, list(turns)

    def complete(self, **request: Any) -> ModelTurn:
        if self.turns:
            return self.turns.pop(0)
        self.stop.stop("interrupted (SIGINT)")
        return text_turn("Done.")


def run_stopped_during_a_command(
    tmp_path: Path, reason: str
) -> tuple[Connection, Issue, IssueResult, ScriptedModel]:
    """Resolve the one issue while its agent runs a long command; stop the run with
    `reason` once the command runs."""
    pid_file = tmp_path / "sleeper.pid"
    command = {"argv": ["sh", "-c", f"echo $$ > {pid_file}; exec sleep 300"]}
    model = ScriptedModel([tool_turn("run_command", command, "a"), text_turn("never asked")])
    connection, ctx = one_issue_fleet(tmp_path, iter([model]))
    issue: Issue = connection.tracker.list_ready()[0]
    with ThreadPoolExecutor(1) as pool:
        resolving = pool.submit(resolve_issue, IssueUnit(issue, 1), "worker-01", ctx)
        try:
            wait_for_file(pid_file)
            started = time.monotonic()
        finally:
            ctx.stop.stop(reason)  # even if the command never ran: the test must not hang
        result = resolving.result(timeout=60)
    assert time.monotonic() - started < 30  # not the 300 s the command had
    assert wait_until_gone(int(pid_file.read_text()))
    assert len(model.calls) == 1  # no turn after the stop
    return connection, issue, result, model


def test_a_stopped_run_kills_the_agents_command_and_gives_the_issue_back(tmp_path: Path) -> None:
    """Ctrl-C during an agent's command: the command dies with its group, the agent stops
    before its next turn, and the issue goes back to the queue (no pull request)."""
    connection, issue, result, _ = run_stopped_during_a_command(tmp_path, "interrupted (SIGTERM)")

    assert result.status == "skipped" and result.pull_request is None  # left for later
    assert "stopped: interrupted (SIGTERM); the issue goes back to the queue" in result.log_tail
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker)
    labels = connection.settings.labels
    after = tracker.get(issue.number)
    assert labels.ready in after.labels and labels.in_progress not in after.labels
    assert tracker.comments(issue.number)[-1] == (
        "Released: The fleet run working on this issue was stopped: interrupted (SIGTERM). "
        "Back in the queue."
    )
    assert not tracker.pulls()


def test_a_cancelled_run_fails_its_issue_instead_of_queueing_it_again(tmp_path: Path) -> None:
    """Cancelled on purpose (in the Prefect UI): the next poll must not start it again."""
    connection, issue, result, _ = run_stopped_during_a_command(tmp_path, CANCELLED)

    assert result.status == "failed"
    labels = connection.settings.labels
    after = connection.tracker.get(issue.number)
    assert labels.failed in after.labels and labels.ready not in after.labels
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker)
    assert tracker.comments(issue.number)[-1] == failure_comment(CANCELLED)


def test_checks_cut_short_by_a_stop_pass_nothing(tmp_path: Path) -> None:
    """Stopped during the agent's last call: the checks do not run, so they cannot pass,
    and no pull request is opened on unchecked work."""
    connection, ctx = one_issue_fleet(tmp_path, iter([]))
    write = tool_turn("write_file", {"path": "changes/fix.md", "content": "# Fix\n"}, "a")
    model = StopsTheRunOnItsLastCall(ctx.stop, [write])
    ctx = dataclasses.replace(ctx, model_for=lambda issue: model)
    issue: Issue = connection.tracker.list_ready()[0]

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert result.status == "skipped" and result.pull_request is None  # back in the queue
    assert "checks after round 1: failed" in result.log_tail
    assert connection.settings.labels.ready in connection.tracker.get(issue.number).labels
    tracker = connection.tracker
    assert isinstance(tracker, LocalTracker) and not tracker.pulls()


def test_a_stopped_run_claims_no_more_issues(tmp_path: Path) -> None:
    connection, ctx = one_issue_fleet(tmp_path, iter([]))
    issue: Issue = connection.tracker.list_ready()[0]
    ctx.stop.stop("interrupted (SIGINT)")

    result = resolve_issue(IssueUnit(issue, 1), "worker-01", ctx)

    assert (result.status, result.log_tail) == ("skipped", "skipped: interrupted (SIGINT)")
    assert connection.settings.labels.ready in connection.tracker.get(issue.number).labels
