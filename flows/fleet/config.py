"""The fleet's settings: a `fleet:` section in YAML (strict, like the pipeline config),
with the original's defaults and environment variables as fallback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flows.config import TASK_NAME_PATTERN, ConfigError, describe_validation_error, read_yaml
from flows.fleet import models
from flows.notify import Notifications

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
REPO_PATTERN = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
BLOCK_NAME_PATTERN = TASK_NAME_PATTERN  # Prefect block names: lowercase letters, digits, dashes


class LabelNames(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ready: str = models.READY_LABEL
    in_progress: str = models.IN_PROGRESS_LABEL
    review: str = models.REVIEW_LABEL
    failed: str = models.FAILED_LABEL
    priority_prefix: str = Field(default="priority:", description="priority:1 runs first")


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["test", "local", "distributed"] = "test"
    repo: str | None = Field(default=None, pattern=REPO_PATTERN, description="OWNER/NAME")
    workers: PositiveInt = 3
    processes: NonNegativeInt | None = Field(
        default=None,
        description="child processes that run the workers' issues (0: threads of the "
        "leader); default: one per CPU core for runs of 100 issues or more on 8 workers "
        "or more, else 0",
    )
    workspace: str = Field(default="./parallel_workspace", description="or $WORKSPACE_DIR")
    keep_failed_workspaces: bool = True
    labels: LabelNames = Field(default_factory=LabelNames)
    model: str = "claude-sonnet-4-5"
    max_tokens: PositiveInt = 8192
    max_turns: PositiveInt = 40
    budget_usd_per_issue: PositiveFloat = 5.0
    command_timeout: PositiveFloat = 300
    max_revisions: NonNegativeInt = 3
    auto_merge_on_approval: bool = True
    max_agent_retries: NonNegativeInt = 2
    retry_backoff_seconds: Annotated[float, Field(ge=0)] = 5
    checks_config: str | None = Field(
        default=".multi-agent.yml",
        description="Pipeline config inside the target repository whose tasks are the checks",
    )
    poll_interval_seconds: PositiveFloat = 30
    requeue_interrupted_claims: bool = Field(
        default=False,
        description="each poll puts back issues whose claim a lost reply interrupted; only "
        "with a GitHub account of the fleet's own (a human's removal of the ready label "
        "with the same account looks the same)",
    )
    github_block: str | None = Field(
        default=None,
        pattern=BLOCK_NAME_PATTERN,
        description="Fleet GitHub block with the repo, token and labels (else GITHUB_TOKEN...)",
    )
    agent_block: str | None = Field(
        default=None,
        pattern=BLOCK_NAME_PATTERN,
        description="Fleet Agent block with the model settings and API key (else env)",
    )
    notifications: Notifications | None = Field(
        default=None, description="Apprise messages when a fleet run finishes."
    )
    simulate: bool = Field(
        default=False,
        description="distributed mode: mock issues and simulated agents, as in test mode",
    )
    # test mode (and simulate) only
    mock_issues: NonNegativeInt = 5
    agent_seconds: Annotated[float, Field(ge=0)] = 1.0
    failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.0


def uses_testbed(settings: FleetConfig) -> bool:
    """Mock issues and simulated agents instead of GitHub and Claude."""
    return settings.mode == "test" or settings.simulate


def load_fleet_config(path: Path | None, overrides: dict[str, object]) -> FleetConfig:
    """The `fleet:` section of a YAML file (optional), then env fallbacks, then CLI overrides.

    Raises ConfigError naming the file (or the command line) and the field."""
    data: dict[str, object] = {}
    source: Path | str = "command line"
    if path is not None:
        loaded = read_yaml(path)
        section = loaded.get("fleet") if isinstance(loaded, dict) else None
        if not isinstance(section, dict):
            raise ConfigError(path, "fleet", "expected a mapping under a top-level 'fleet:' key")
        data.update(section)
        source = path
    if "workspace" not in data and os.environ.get("WORKSPACE_DIR"):
        data["workspace"] = os.environ["WORKSPACE_DIR"]
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        field, problem = describe_validation_error(exc.errors()[0])
        raise ConfigError(source, field, problem) from None
