"""The pipeline's YAML config: strict pydantic models and a loader whose errors name the
file, the field path and the problem.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Runtime objects (the task matrix) are built from these models in
`flows.pipeline.matrix`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flows.notify import Notifications

# libyaml's loader is ~20x faster than the pure-Python one (1000-task configs).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"

PositiveInt = Annotated[int, Field(strict=True, gt=0)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# A command is a shell string (run with /bin/sh -c) or an argv list (run without a shell).
Command = str | Annotated[list[str], Field(min_length=1)]


class ConfigError(Exception):
    """A user mistake in a config file: where it is and what is wrong."""

    def __init__(self, file: Path | str, field: str, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {problem}")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scaling(StrictModel):
    max_parallel: PositiveInt = Field(
        default=50, description="Never more tasks running at once than this."
    )


class TaskDefaults(StrictModel):
    timeout: PositiveSeconds = Field(
        default=600, description="Seconds; on timeout the whole process group is killed."
    )
    retries: NonNegativeInt = Field(default=0, description="Extra attempts after a failure.")
    retry_delay: NonNegativeSeconds = Field(
        default=5, description="Seconds before the first retry, doubling on each retry."
    )
    continue_on_error: bool = Field(
        default=True,
        description="False: a failure of this task skips the tiers after its own.",
    )
    skip_exit_codes: list[int] = Field(
        default_factory=list,
        description="Exit codes meaning 'could not run here' (e.g. 77): reported as skipped.",
    )


class SetupConfig(StrictModel):
    run: Annotated[list[Command], Field(min_length=1)] = Field(
        description="Commands run once, in order, before tier 1."
    )
    cache_key_files: list[str] = Field(
        default_factory=list,
        description="Files (relative to workdir) whose content hash keys the setup cache.",
    )
    path: list[str] = Field(
        default_factory=list,
        description="Folders inside the cache dir put first on PATH for setup and workers.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Root of the setup cache (relative to the config file); "
        "default $XDG_CACHE_HOME/prefect-parallel-agents/setup.",
    )
    timeout: PositiveSeconds = Field(default=1800, description="Seconds for each command.")
    env: dict[str, str] = Field(default_factory=dict)


class TaskConfig(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN, description="Unique, [a-z0-9-]+.")
    priority: PositiveInt = Field(description="Tier: 1 runs first.")
    run: Command
    timeout: PositiveSeconds | None = None
    retries: NonNegativeInt | None = None
    retry_delay: NonNegativeSeconds | None = None
    continue_on_error: bool | None = None
    skip_exit_codes: list[int] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    artifacts: list[str] = Field(
        default_factory=list, description="Globs (relative to workdir) collected after the run."
    )

    @field_validator("run")
    @classmethod
    def _command_not_blank(cls, value: Command) -> Command:
        if isinstance(value, str) and not value.strip():
            raise ValueError("command is empty")
        return value


class PipelineConfig(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN, description="Pipeline name, [a-z0-9-]+.")
    workdir: str = Field(default=".", description="Relative to the config file.")
    fail_fast: bool = Field(default=False, description="Stop scheduling after the first failure.")
    scaling: Scaling = Field(default_factory=Scaling)
    setup: SetupConfig | None = None
    defaults: TaskDefaults = Field(default_factory=TaskDefaults)
    tiers: dict[PositiveInt, str] = Field(default_factory=dict, description="Names of tiers.")
    tasks: Annotated[list[TaskConfig], Field(min_length=1)]
    notifications: Notifications | None = Field(
        default=None, description="Apprise messages when the pipeline finishes."
    )

    @model_validator(mode="after")
    def _unique_task_names(self) -> PipelineConfig:
        seen: set[str] = set()
        for index, task in enumerate(self.tasks):
            if task.name in seen:
                raise _FieldProblem(("tasks", index, "name"), f"duplicate task name {task.name!r}")
            seen.add(task.name)
        return self


class _FieldProblem(ValueError):
    """Raised from validators that know the exact field path of the problem."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def format_loc(loc: tuple[str | int, ...]) -> str:
    """('tasks', 2, 'name') -> 'tasks[2].name'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def describe_validation_error(error: Any) -> tuple[str, str]:
    """One pydantic error -> (field path, problem), skipping pydantic's union noise."""
    loc = tuple(part for part in error["loc"] if not _is_union_tag(part) and part != "[key]")
    kind = error["type"]
    given = error.get("input")
    if kind == "extra_forbidden":
        return format_loc(loc), "unknown key"
    if kind == "missing":
        return format_loc(loc), "required field is missing"
    ctx = error.get("ctx") or {}
    if isinstance(ctx.get("error"), _FieldProblem):
        return format_loc(ctx["error"].loc), str(ctx["error"])
    message = error["msg"].removeprefix("Value error, ")
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern", "")
        wanted = (
            "[a-z0-9-]+ (lowercase letters, digits, dashes)"
            if pattern == TASK_NAME_PATTERN
            else f"the pattern {pattern}"
        )
        message = f"must match {wanted}; got {given!r}"
    elif given is not None and not isinstance(given, dict | list):
        message = f"{message}; got {given!r}"
    return format_loc(loc), message


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in {"str", "list[str]"} or part.startswith("function-"))


def parse_config(data: Any, file: Path | str) -> PipelineConfig:
    """Validate already-parsed YAML; raise ConfigError naming the first problem found."""
    if not isinstance(data, dict):
        raise ConfigError(file, "", "the config must be a mapping of keys to values")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        field, problem = describe_validation_error(exc.errors()[0])
        more = len(exc.errors()) - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(file, field, problem) from None


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate a pipeline config file."""
    path = Path(path)
    data = read_yaml(path)
    config = parse_config(data, path)
    workdir = resolve_workdir(path, config)
    if not workdir.is_dir():
        raise ConfigError(path, "workdir", f"folder {str(workdir)!r} does not exist")
    return config


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the file ({exc.__class__.__name__})") from None
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(path, "", f"invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"invalid YAML: {exc}") from None


def resolve_workdir(config_path: Path, config: PipelineConfig) -> Path:
    return (config_path.parent / config.workdir).resolve()
