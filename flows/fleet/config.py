"""The fleet's settings: a `fleet:` section in YAML (strict, like the pipeline config),
with the original's defaults and environment variables as fallback."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flows.config import (
    TASK_NAME_PATTERN,
    ConfigError,
    NonNegativeInt,
    PositiveInt,
    RelativePath,
    describe_validation_error,
    read_yaml,
)
from flows.fleet import models
from flows.fleet.cost import Price, priced_model
from flows.notify import Notifications

DAY_S = 86_400.0
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
# Durations are finite and at most a day: a sleep or a timer of 1e300 s crashes Python.
Seconds = Annotated[float, Field(ge=0, le=DAY_S, allow_inf_nan=False)]
PositiveSeconds = Annotated[float, Field(gt=0, le=DAY_S, allow_inf_nan=False)]
REPO_PATTERN = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
BLOCK_NAME_PATTERN = TASK_NAME_PATTERN  # Prefect block names: lowercase letters, digits, dashes
MAX_LABEL_CHARS = 50  # GitHub's limit


def _repository_name(value: str) -> str:
    """OWNER/NAME, neither of them "." or "..": those would change the API's URL path."""
    if any(part in (".", "..") for part in value.split("/")):
        raise ValueError("not a repository name (OWNER/NAME)")
    return value


RepoName = Annotated[str, Field(pattern=REPO_PATTERN), AfterValidator(_repository_name)]
# A label name as GitHub takes it; a comma would split it in GitHub's label filters.
LabelName = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"^[^,]+$")]


class LabelNames(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    ready: LabelName = models.READY_LABEL
    in_progress: LabelName = models.IN_PROGRESS_LABEL
    review: LabelName = models.REVIEW_LABEL
    failed: LabelName = models.FAILED_LABEL
    priority_prefix: LabelName = Field(default="priority:", description="priority:1 runs first")

    @model_validator(mode="after")
    def _distinct(self) -> LabelNames:
        names = [self.ready, self.in_progress, self.review, self.failed]
        if len(set(names)) < len(names):
            raise ValueError(f"the four labels must differ, got {names}")
        return self


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    mode: Literal["test", "local", "distributed"] = "test"
    repo: RepoName | None = Field(default=None, description="OWNER/NAME")
    workers: PositiveInt = 3
    processes: NonNegativeInt | None = Field(
        default=None,
        description="child processes that run the workers' issues (0: threads of the "
        "leader); default: one per CPU core for runs of 100 issues or more on 8 workers "
        "or more, else 0",
    )
    workspace: str = Field(
        default="./parallel_workspace", min_length=1, description="or $WORKSPACE_DIR"
    )
    keep_failed_workspaces: bool = True
    labels: LabelNames = Field(default_factory=LabelNames)
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description="USD per million tokens by model name: {input, output, cache_write, "
        "cache_read}, over the built-in table (cost.PRICES); a model without a price is refused",
    )
    model: str = "claude-sonnet-4-5"  # after prices: its validator reads them
    max_tokens: PositiveInt = 8192
    max_turns: PositiveInt = 40
    budget_usd_per_issue: PositiveFloat = 5.0
    command_timeout: PositiveSeconds = 300
    max_revisions: NonNegativeInt = 3
    auto_merge_on_approval: bool = True
    max_agent_retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_backoff_seconds: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False)] = 5
    checks_config: RelativePath | None = Field(
        default=".multi-agent.yml",
        description="Pipeline config inside the target repository whose tasks are the checks",
    )
    poll_interval_seconds: PositiveSeconds = 30
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
    mock_issues_file: str | None = Field(
        default=None,
        min_length=1,
        description="YAML list of issues ({title, body, labels}) to add, each once (not when "
        "an issue of that title exists); relative to the config file, or on the command "
        "line to the working directory",
    )
    agent_seconds: Seconds = 1.0
    failure_rate: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.0

    @field_validator("model")
    @classmethod
    def _priced_model(cls, model: str, info: ValidationInfo) -> str:
        return priced_model(model, info)  # built in, or in `prices`


def uses_testbed(settings: FleetConfig) -> bool:
    """Mock issues and simulated agents instead of GitHub and Claude."""
    return settings.mode == "test" or settings.simulate


def load_fleet_config(
    path: Path | None, overrides: dict[str, object], *, from_command_line: bool = True
) -> FleetConfig:
    """The `fleet:` section of a YAML file (optional), then env fallbacks, then overrides:
    the command line's options, or a flow run's `overrides` parameter.

    The file is validated on its own first, so that an override cannot hide a mistake in
    it; ConfigError names the file and field, or the option (or parameter) given."""
    data: dict[str, object] = {}
    if path is not None:
        loaded = read_yaml(path)
        section = loaded.get("fleet") if isinstance(loaded, dict) else None
        if not isinstance(section, dict):
            raise ConfigError(path, "fleet", "expected a mapping under a top-level 'fleet:' key")
        data.update(section)
        _validate(data, path, {key: f"fleet.{key}" for key in data})  # as the file has it
        _anchor(data, "mock_issues_file", path.parent, path, "fleet.mock_issues_file")
    if "workspace" not in data and os.environ.get("WORKSPACE_DIR"):
        data["workspace"] = os.environ["WORKSPACE_DIR"]
        _validate(data, "environment", {"workspace": "WORKSPACE_DIR"})
    given = {key: value for key, value in overrides.items() if value is not None}
    if from_command_line:
        source, names = "command line", {key: _option(key) for key in given}
    else:
        source, names = "flow parameters", {key: f"overrides.{key}" for key in given}
    _anchor(given, "mock_issues_file", Path.cwd(), source, names.get("mock_issues_file"))
    return _validate({**data, **given}, source, names)


TESTBED_ONLY = ("mock_issues", "mock_issues_file", "agent_seconds", "failure_rate")


def refuse_options_of_other_modes(settings: FleetConfig, options: Mapping[str, object]) -> None:
    """ConfigError for a command-line option (those given, not None) that the mode in
    effect would silently ignore."""
    given = {key for key, value in options.items() if value is not None and value is not False}
    testbed = uses_testbed(settings)
    ignored = [] if testbed else sorted(given & set(TESTBED_ONLY))
    if ignored:
        raise ConfigError("command line", _option(ignored[0]), "only for test mode (or "
                          f"distributed --simulate); the mode is {settings.mode}")  # fmt: skip
    if "simulate" in given and settings.mode != "distributed":
        raise ConfigError("command line", "--simulate", "only for distributed mode (test "
                          f"mode always simulates); the mode is {settings.mode}")  # fmt: skip
    if "repo" in given and testbed:
        raise ConfigError("command line", "--repo", "the testbed has its own repository (test "
                          "mode, --simulate): use --mode local or distributed")  # fmt: skip


def _option(key: str) -> str:
    return "--" + key.replace("_", "-")


def _anchor(
    data: dict[str, object], key: str, base: Path, source: Path | str, name: str | None
) -> None:
    """Make the file path `data[key]` absolute against `base`; ConfigError when it is not
    a file (named as `source` calls it)."""
    value = data.get(key)
    if not isinstance(value, str):
        return
    path = base / value
    if not path.is_file():
        raise ConfigError(source, name or key, f"no such file: {path}")
    data[key] = str(path.absolute())


def _validate(
    data: dict[str, object], source: Path | str, names: dict[str, str] | None = None
) -> FleetConfig:
    """`names`: how the source calls a field (an option, a variable), where it differs."""
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        if error["type"] == "unexpected_keyword_argument":  # a dataclass's (Price) unknown key
            error["type"] = "extra_forbidden"
        field, problem = describe_validation_error(error)
        top = field.split(".")[0].split("[")[0]
        if names and top in names:
            field = names[top] + field[len(top) :]
        raise ConfigError(source, field, problem) from None
