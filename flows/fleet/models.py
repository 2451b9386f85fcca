"""The fleet's stage records: Issue -> AgentResult -> PullRequest, and the per-issue result
the leader reports. Pydantic, so they persist as JSON and a rerun can skip finished work."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from flows.report import UnitResult

READY_LABEL = "ready-for-dev"
IN_PROGRESS_LABEL = "in-progress"
REVIEW_LABEL = "ai-review"
FAILED_LABEL = "ai-failed"


def branch_name(number: int) -> str:
    """Branch of an issue: built from its number only, so no title can make it unsafe."""
    return f"ai-feature/issue-{int(number)}"


class Issue(BaseModel):
    model_config = ConfigDict(frozen=True)

    number: int
    title: str
    body: str = ""
    labels: tuple[str, ...] = ()
    url: str | None = None

    @property
    def name(self) -> str:
        return f"issue-{self.number}"

    @property
    def branch(self) -> str:
        return branch_name(self.number)

    def priority(self, prefix: str = "priority:", default: int = 2) -> int:
        """`priority:1`..`priority:N` labels map to leader tiers (1 runs first)."""
        for label in self.labels:
            if label.startswith(prefix) and label[len(prefix) :].isdigit():
                return max(1, int(label[len(prefix) :]))
        return default


class PullRequest(BaseModel):
    number: int
    url: str
    branch: str
    created: bool = Field(description="False when an open pull request was found and updated")


class Usage(BaseModel):
    """Token usage of one model call, as the Messages API reports it."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens
            + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


class AgentResult(BaseModel):
    ok: bool
    summary: str = ""
    turns: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    error: str | None = None


class IssueResult(UnitResult):
    """One issue's outcome in the fleet report (the pipeline's task fields plus these)."""

    issue: int
    branch: str
    pull_request: str | None = None
    cost_usd: float = 0.0
    stages: dict[str, float] = Field(
        default_factory=dict, description="Seconds spent per stage: claim, workspace, agent, ..."
    )
