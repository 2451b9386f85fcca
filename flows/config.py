"""The pipeline's YAML config: strict pydantic models and a loader whose errors name the
file, the field path and the problem.

Every model forbids unknown keys, so a typo is an error rather than a silently ignored
setting. Runtime objects (the task matrix) are built from these models in
`flows.pipeline.matrix`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from flows.notify import Notifications

# libyaml's loader is ~20x faster than the pure-Python one (1000-task configs).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
# Beyond these a number is a typo, and too large for the timer and sleep calls.
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600
MAX_RETRY_DELAY_SECONDS = 24 * 3600


def _command_runnable(value: str | list[str]) -> str | list[str]:
    parts = [value] if isinstance(value, str) else value
    if not parts:
        raise ValueError("the command list is empty")
    if not parts[0].strip():
        raise ValueError(
            "command is empty" if isinstance(value, str) else "the program (first item) is empty"
        )
    if any("\0" in part for part in parts):
        raise ValueError("the command contains a NUL byte")
    return value


def _relative_path(value: str) -> str:
    """A path or glob that cannot leave the folder it is relative to."""
    path = _relative(value)
    if ".." in path.parts:
        raise ValueError("must be a relative path that stays inside its folder (no '..')")
    return value


def _relative(value: str) -> PurePosixPath:
    if not value:
        raise ValueError("the path is empty")
    if "\0" in value:
        raise ValueError("the path contains a NUL byte")
    path = PurePosixPath(value)
    if path.is_absolute():
        raise ValueError("must be a relative path")
    return path


def _relative_glob(value: str) -> str:
    """A glob relative to its folder (pathlib cannot glob an absolute or empty pattern)."""
    _relative(value)
    return value


def _env_runnable(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(
                f"invalid variable name {name!r}: it must be non-empty, without '=' or NUL"
            )
        if "\0" in value:
            raise ValueError(f"the value of {name} contains a NUL byte")
    return env


PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
ExitCode = Annotated[int, Field(ge=0, le=255)]
TimeoutSeconds = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_SECONDS, allow_inf_nan=False)]
RetryDelaySeconds = Annotated[float, Field(ge=0, le=MAX_RETRY_DELAY_SECONDS, allow_inf_nan=False)]
RelativePath = Annotated[str, AfterValidator(_relative_path)]  # stays inside its folder
RelativeGlob = Annotated[str, AfterValidator(_relative_glob)]  # may reach up with '..'
Env = Annotated[dict[str, str], AfterValidator(_env_runnable)]
# A command is a shell string (run with /bin/sh -c) or an argv list (run without a shell).
Command = Annotated[str | list[str], AfterValidator(_command_runnable)]


class ConfigError(Exception):
    """A user mistake in a config file: where it is and what is wrong."""

    def __init__(self, file: Path | str, field: str, problem: str) -> None:
        self.file = str(file)
        self.field = field
        self.problem = problem
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {problem}")


class StrictModel(BaseModel):
    # strict: no coercion, so `timeout: true` or `fail_fast: "yes"` is an error, not 1 or True.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Scaling(StrictModel):
    max_parallel: PositiveInt = Field(
        default=50, description="Never more tasks running at once than this."
    )


class TaskDefaults(StrictModel):
    timeout: TimeoutSeconds = Field(
        default=600, description="Seconds; on timeout the whole process group is killed."
    )
    retries: NonNegativeInt = Field(default=0, description="Extra attempts after a failure.")
    retry_delay: RetryDelaySeconds = Field(
        default=5, description="Seconds before the first retry, doubling on each retry."
    )
    continue_on_error: bool = Field(
        default=True,
        description="False: a failure of this task skips the tiers after its own.",
    )
    skip_exit_codes: list[ExitCode] = Field(
        default_factory=list,
        description="Exit codes meaning 'could not run here' (e.g. 77): reported as skipped.",
    )


class SetupConfig(StrictModel):
    run: Annotated[list[Command], Field(min_length=1)] = Field(
        description="Commands run once, in order, before tier 1."
    )
    cache_key_files: list[RelativeGlob] = Field(
        default_factory=list,
        description="Files (relative to workdir) whose content hash keys the setup cache.",
    )
    path: list[RelativePath] = Field(
        default_factory=list,
        description="Folders inside the cache dir put first on PATH for setup and workers.",
    )
    cache_dir: str | None = Field(
        default=None,
        description="Root of the setup cache (relative to the config file); "
        "default $XDG_CACHE_HOME/prefect-parallel-agents/setup.",
    )
    timeout: TimeoutSeconds = Field(default=1800, description="Seconds for each command.")
    env: Env = Field(default_factory=dict)


class TaskConfig(StrictModel):
    name: str = Field(pattern=TASK_NAME_PATTERN, description="Unique, [a-z0-9-]+.")
    priority: PositiveInt = Field(description="Tier: 1 runs first.")
    run: Command
    timeout: TimeoutSeconds | None = None
    retries: NonNegativeInt | None = None
    retry_delay: RetryDelaySeconds | None = None
    continue_on_error: bool | None = None
    skip_exit_codes: list[ExitCode] | None = None
    env: Env = Field(default_factory=dict)
    artifacts: list[RelativePath] = Field(
        default_factory=list, description="Globs (relative to workdir) collected after the run."
    )


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
    if kind == "float_type" and isinstance(given, str) and _looks_like_a_number(given):
        message += _number_as_text_hint(given)
    return format_loc(loc), message


def _number_as_text_hint(text: str) -> str:
    """Why YAML gave a number as text: it was quoted, or written in a form YAML 1.1 does
    not read as a number (1e3)."""
    unquoted = yaml.safe_load(text)
    if isinstance(unquoted, int | float) and not isinstance(unquoted, bool):
        return " (a quoted number is text: leave out the quotes)"
    if "e" in text.lower() and text.lower() not in {"inf", "infinity", "-inf", "-infinity"}:
        return " (YAML reads a number like 1e3 as text: write 1000 or 1.0e+3)"
    return ""


def _looks_like_a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _wrong_branch(error: ErrorDetails) -> bool:
    """A command's error from the branch its value did not take: a list said not to be a
    string (the list branch's error names the entry that is wrong), or anything but a list
    said not to be a list (the string branch's error says what it is)."""
    loc, given = error["loc"], error.get("input")
    return ("str" in loc and isinstance(given, list)) or (
        bool(loc) and loc[-1] == "list[str]" and not isinstance(given, list)
    )


def _is_union_tag(part: str | int) -> bool:
    return isinstance(part, str) and (part in {"str", "list[str]"} or part.startswith("function-"))


def parse_config(data: Any, file: Path | str) -> PipelineConfig:
    """Validate already-parsed YAML; raise ConfigError naming the first problem found."""
    if not isinstance(data, dict):
        raise ConfigError(file, "", "the config must be a mapping of keys to values")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        errors = [error for error in exc.errors() if not _wrong_branch(error)] or exc.errors()
        field, problem = describe_validation_error(errors[0])
        more = len(errors) - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''})"
        raise ConfigError(file, field, problem) from None


def load_config(path: Path | str) -> PipelineConfig:
    """Read and validate a pipeline config file."""
    path = Path(path)
    data = read_yaml(path)
    config = parse_config(data, path)
    workdir = resolve_workdir(path, config)
    if not workdir.exists():
        raise ConfigError(path, "workdir", f"folder {str(workdir)!r} does not exist")
    if not workdir.is_dir():
        raise ConfigError(path, "workdir", f"{str(workdir)!r} is not a folder")
    return config


class _UniqueKeyLoader(_YAML_LOADER):  # type: ignore[misc,valid-type]
    """Refuses a key given twice in one mapping (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue  # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, "", f"cannot read the file ({_reason(exc)})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(path, "", f"invalid YAML at {where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(path, "", f"invalid YAML: {exc}") from None


def resolve_config_path(path: Path) -> Path:
    """The absolute path of a config file; a ConfigError where it cannot be resolved."""
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(path, "", f"cannot read the file ({_reason(exc)})") from None


def resolve_workdir(config_path: Path, config: PipelineConfig) -> Path:
    return _resolve(config_path.parent / config.workdir, config_path, "workdir")


def resolve_folder(path: Path, file: Path | str, field: str) -> Path:
    """`path` resolved, if it is a folder, or its nearest existing parent is a folder we may
    create folders in; else a ConfigError. Creates nothing: runs that share a folder (the
    checks of parallel issues share the setup cache) may check it at the same moment."""
    path = _resolve(path, file, field)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(file, field, f"{str(existing)!r} is not a folder")
    if existing != path and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            file, field, f"cannot create the folder {str(path)!r} (no write access to {existing})"
        )
    return path


def _resolve(path: Path, file: Path | str, field: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(file, field, f"cannot resolve {str(path)!r} ({_reason(exc)})") from None


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, RuntimeError):  # pathlib's resolve() on a symlink loop (Python < 3.13)
        return "symlink loop"
    if isinstance(exc, ValueError):  # os functions refuse a path with a NUL byte
        return str(exc)
    return exc.__class__.__name__
