"""Test mode's agent: a Model that really edits the workspace through the agent loop's
tools, takes `seconds`, and fails for a deterministic share of issues."""

from __future__ import annotations

import random

from flows.commands import RunStop
from flows.fleet.agent import AgentError, Message, ModelTurn
from flows.fleet.models import Issue, Usage

SIMULATED_USAGE = Usage(input_tokens=1200, output_tokens=350)


def fails(issue: Issue, failure_rate: float, seed: str = "fleet") -> bool:
    """Whether the simulated agent fails this issue: the same answer on every run."""
    return random.Random(f"{seed}:{issue.number}").random() < failure_rate


class SimulatedModel:
    """Two turns: write `changes/issue-N.md` (a tool call the loop executes), then finish."""

    def __init__(self, issue: Issue, seconds: float, fail: bool) -> None:
        self._issue = issue
        self._seconds = seconds
        self._fail = fail
        self._turn = 0

    def complete(
        self, *, system: str, messages: list[Message], tools: list[dict[str, object]],
        max_tokens: int, stop: RunStop,
    ) -> ModelTurn:  # fmt: skip
        self._turn += 1
        stop.wait(self._seconds / 2)  # a stop of the run ends the "thinking" at once
        if stop.reason is not None:
            raise AgentError("permanent", f"stopped: {stop.reason}")
        if self._fail:
            raise AgentError("permanent", f"simulated agent failure on issue #{self._issue.number}")
        if self._turn == 1:
            note = f"# {self._issue.title}\n\nResolved by the simulated agent.\n"
            content = [{
                "type": "tool_use", "id": f"sim-{self._issue.number}-1", "name": "write_file",
                "input": {"path": f"changes/issue-{self._issue.number}.md", "content": note},
            }]  # fmt: skip
            return ModelTurn(content=content, stop_reason="tool_use", usage=SIMULATED_USAGE)
        summary = f"Added changes/issue-{self._issue.number}.md for: {self._issue.title}"
        return ModelTurn(
            content=[{"type": "text", "text": summary}], stop_reason="end_turn",
            usage=SIMULATED_USAGE,
        )  # fmt: skip
