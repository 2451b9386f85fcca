"""The agent's tools, bound to one workspace directory.

Every path the model gives is resolved (symlinks followed) and must stay inside the
workspace: absolute paths and `..` are refused outright, and a symlink that leads outside is
refused like any other outside path. A refused or failed call becomes an error outcome the
model reads (`{"error": "..."}`, is_error), never an exception. Sizes and outputs are capped.

`run_command` runs an argv list without a shell, in the workspace, with a scrubbed
environment (no tokens, keys or passwords; a throwaway HOME) and a capped timeout that kills
the whole process group. It is not a sandbox: the command runs with the worker's user
rights, so isolating the process (container, user) is the deployment's job.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flows.commands import RunStop
from flows.commands import run_command as run_process
from flows.secrecy import without_secrets

log = logging.getLogger(__name__)

DEFAULT_READ_LINES = 2000
MAX_LINE_CHARS = 2000  # longer lines (minified files) are cut when read or searched
MAX_LIST_ENTRIES = 2000
MAX_SEARCH_MATCHES = 200
SEARCH_TIMEOUT_S = 10.0  # a pattern that backtracks without end is stopped, not waited for
BINARY_SNIFF_BYTES = 8192
SKIPPED_DIRS = frozenset(
    {".git", "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
     ".ruff_cache"}
)  # fmt: skip
PASSED_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TERM", "TZ")


@dataclass(frozen=True)
class ToolOutcome:
    """What goes back to the model in a tool_result block."""

    text: str
    is_error: bool = False


class ToolRefused(Exception):
    """A tool call that cannot be done; its message is shown to the model."""


# ----- tool inputs: one pydantic model per tool, which is also its JSON schema -----------


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadFileInput(_Input):
    path: str = Field(description="File path relative to the workspace root.")
    offset: int = Field(1, ge=1, description="First line to read (1-based).")
    limit: int = Field(DEFAULT_READ_LINES, ge=1, description="How many lines to read.")


class WriteFileInput(_Input):
    path: str = Field(description="File path relative to the workspace root.")
    content: str = Field(description="The whole new content of the file.")


class EditFileInput(_Input):
    path: str = Field(description="File path relative to the workspace root.")
    old: str = Field(min_length=1, description="Exact text to replace; must occur exactly once.")
    new: str = Field(description="Replacement text.")


class ListFilesInput(_Input):
    path: str = Field(".", description="Directory relative to the workspace root.")
    pattern: str | None = Field(
        None, description="Optional glob on the relative path, e.g. '*.py' or 'src/*.ts'."
    )


class SearchInput(_Input):
    pattern: str = Field(description="Python regular expression, matched line by line.")
    path: str = Field(".", description="File or directory relative to the workspace root.")


class RunCommandInput(_Input):
    argv: list[str] = Field(
        min_length=1, description="Program and arguments, e.g. ['pytest', '-q']. No shell."
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds before the command is killed (capped by the maximum)."
    )


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    input_model: type[_Input]


_TOOLS = (
    _Tool("read_file", "Read a text file of the workspace, with line numbers.", ReadFileInput),
    _Tool(
        "write_file",
        "Create or overwrite a file of the workspace (parent directories are created).",
        WriteFileInput,
    ),
    _Tool(
        "edit_file",
        "Replace one exact, unique occurrence of `old` by `new` in a file. Include enough "
        "surrounding text in `old` to make it unique; copy it without line numbers.",
        EditFileInput,
    ),
    _Tool(
        "list_files",
        "List files under a directory of the workspace, recursively (.git, node_modules, "
        "virtualenvs and caches are skipped).",
        ListFilesInput,
    ),
    _Tool(
        "search",
        "Search files for a regular expression; prints path:line: text for each match.",
        SearchInput,
    ),
    _Tool(
        "run_command",
        "Run a program in the workspace root (argv list, no shell, no network credentials). "
        "Returns the exit code and the combined stdout and stderr.",
        RunCommandInput,
    ),
)


@functools.cache
def _tool_schemas() -> tuple[dict[str, Any], ...]:
    """The tools in the Messages API's format, built once: pydantic generates a JSON
    schema in milliseconds, which a fleet of short agents would pay on every run."""
    return tuple(
        {"name": t.name, "description": t.description, "input_schema": _schema(t.input_model)}
        for t in _TOOLS
    )


def _schema(model: type[_Input]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    return schema


def scrubbed_env(
    source: Mapping[str, str], home: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a command: a few harmless variables of `source`, then `extra`;
    any name that looks like a secret is dropped, and HOME is `home`."""
    env = {name: source[name] for name in PASSED_ENV if name in source}
    env.update(extra or {})
    env = without_secrets(env)
    env.setdefault("PATH", os.defpath)
    env.update(HOME=str(home), GIT_TERMINAL_PROMPT="0", GIT_CONFIG_NOSYSTEM="1")
    return env


class Toolbox:
    """The tools of one agent, confined to `workspace`."""

    def __init__(
        self,
        workspace: Path,
        command_timeout: float = 600.0,
        max_output: int = 30_000,
        *,
        max_file_bytes: int = 1_000_000,
        max_command_file_bytes: int = 2 * 1024**3,  # a big wheel fits; a runaway `yes` stops
        env: Mapping[str, str] | None = None,
        stop: RunStop | None = None,
    ) -> None:
        """`command_timeout` is both the default and the maximum of run_command; `env` adds
        variables for commands (e.g. a PATH with a tool cache first), secrets still dropped;
        `stop` kills the commands when the run is stopped."""
        self.root = workspace.resolve(strict=True)
        if not self.root.is_dir():
            raise ValueError(f"workspace is not a directory: {workspace}")
        self.command_timeout = command_timeout
        self.max_output = max_output
        self.max_file_bytes = max_file_bytes
        self.max_command_file_bytes = max_command_file_bytes  # its output, or any file it writes
        self._extra_env = dict(env or {})
        self._stop = stop

    def __repr__(self) -> str:
        return f"Toolbox({str(self.root)!r})"

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in the Messages API's format (copies: callers may add to them)."""
        return copy.deepcopy(list(_tool_schemas()))

    def call(self, name: str, tool_input: Any) -> ToolOutcome:
        """Run one tool call; refusals, bad inputs and unknown tools become error outcomes."""
        tool = next((t for t in _TOOLS if t.name == name), None)
        if tool is None:
            return _error(f"unknown tool {name!r}; tools: {', '.join(t.name for t in _TOOLS)}")
        try:
            args = tool.input_model.model_validate(tool_input)
        except ValidationError as exc:
            return _error(f"invalid input for {name}: {_validation_summary(exc)}")
        if not _encodable(tool_input):
            return _error(f"invalid input for {name}: text with lone surrogates (not UTF-8)")
        try:
            if isinstance(args, RunCommandInput):
                return self.run_command(args.argv, args.timeout)
            text: str = getattr(self, name)(**args.model_dump())
        except ToolRefused as exc:
            return _error(str(exc))
        except OSError as exc:
            return _error(f"{name} failed: {exc.strerror or type(exc).__name__}")
        except Exception as exc:  # a tool's own failure fails the call, never the issue
            log.exception("tool %s failed in %s", name, self.root)
            return _error(f"{name} failed: {type(exc).__name__}: {exc}")
        return ToolOutcome(self._cap(text))

    # ----- the tools ----------------------------------------------------------------------

    def read_file(self, path: str, offset: int = 1, limit: int = DEFAULT_READ_LINES) -> str:
        target = self._existing_file(path)
        data = target.read_bytes()
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            raise ToolRefused(f"{path} is a binary file ({len(data)} bytes)")
        lines = data.decode("utf-8", errors="replace").splitlines()
        chosen = lines[offset - 1 : offset - 1 + limit]
        numbered = [f"{offset + i:>6}\t{line[:MAX_LINE_CHARS]}" for i, line in enumerate(chosen)]
        if not chosen:
            return f"[{path} has {len(lines)} lines; nothing at line {offset}]"
        last = offset + len(chosen) - 1
        if offset > 1 or last < len(lines):
            numbered.append(f"[lines {offset}-{last} of {len(lines)}; use offset to read more]")
        return "\n".join(numbered)

    def write_file(self, path: str, content: str) -> str:
        target = self._resolve(path, writing=True)
        data = content.encode("utf-8")
        self._check_size(len(data), "content")
        if target.is_dir():
            raise ToolRefused(f"{path} is a directory")
        if target.exists() and not target.is_file():  # a FIFO would block the write forever
            raise ToolRefused(f"{path} is not a regular file")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return f"wrote {len(data)} bytes to {self._relative(target)}"

    def edit_file(self, path: str, old: str, new: str) -> str:
        target = self._existing_file(path, writing=True)
        try:
            text = target.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ToolRefused(f"{path} is not UTF-8 text") from None
        count = text.count(old)
        if count == 0:
            raise ToolRefused(f"`old` was not found in {path}; read the file and copy it exactly")
        if count > 1:
            raise ToolRefused(f"`old` occurs {count} times in {path}; add context to be unique")
        data = text.replace(old, new, 1).encode("utf-8")
        self._check_size(len(data), "the edited file")
        target.write_bytes(data)
        return f"edited {self._relative(target)}"

    def list_files(self, path: str = ".", pattern: str | None = None) -> str:
        start = self._resolve(path)
        if not start.exists():
            raise ToolRefused(f"{path} does not exist")
        names = (self._relative(file) for file in self._walk(start))
        matching = [name for name in names if pattern is None or fnmatch.fnmatch(name, pattern)]
        if not matching:
            return "[no files]"
        shown = matching[:MAX_LIST_ENTRIES]
        if len(matching) > len(shown):
            shown.append(f"[{len(matching) - len(shown)} more files not shown]")
        return "\n".join(shown)

    def search(self, pattern: str, path: str = ".") -> str:
        """Matching uses the `regex` module (Python's syntax): unlike `re`, it can stop a
        pattern that backtracks without end, and it lets other threads run meanwhile."""
        try:
            compiled = regex.compile(pattern)
        except (regex.error, OverflowError, RecursionError) as exc:
            raise ToolRefused(f"invalid regular expression: {exc}") from None
        start = self._resolve(path)
        if not start.exists():
            raise ToolRefused(f"{path} does not exist")
        deadline = time.monotonic() + SEARCH_TIMEOUT_S
        matches: list[str] = []
        for file in self._walk(start):
            for number, line in self._text_lines(file):
                try:
                    found = compiled.search(
                        line, timeout=max(0.0, deadline - time.monotonic()), concurrent=True
                    )
                except TimeoutError:
                    raise ToolRefused(
                        f"search stopped after {SEARCH_TIMEOUT_S:g}s (the pattern backtracks "
                        "too much, or there is too much to search); use a simpler pattern "
                        "or a narrower path"
                    ) from None
                if found:
                    matches.append(f"{self._relative(file)}:{number}: {line.strip()[:300]}")
                    if len(matches) >= MAX_SEARCH_MATCHES:
                        return "\n".join([*matches, f"[stopped at {MAX_SEARCH_MATCHES} matches]"])
        return "\n".join(matches) or "[no matches]"

    def run_command(self, argv: list[str], timeout: float | None = None) -> ToolOutcome:
        """Run argv in the workspace; a timeout or a command that cannot start is an error."""
        if any("\0" in arg for arg in argv):
            raise ToolRefused("argv contains a NUL byte")
        limit = min(timeout or self.command_timeout, self.command_timeout)
        with tempfile.TemporaryDirectory(prefix="fleet-command-") as scratch:
            home = Path(scratch, "home")
            home.mkdir()
            output_log = Path(scratch, "output.log")
            env = scrubbed_env(os.environ, home, self._extra_env)
            outcome = run_process(argv, cwd=self.root, env=env, timeout=limit,
                                  log_path=output_log, stop=self._stop,
                                  max_file_bytes=self.max_command_file_bytes)  # fmt: skip
            output = self._capped_log(output_log)
            if output_log.stat().st_size >= self.max_command_file_bytes:
                output += (
                    f"\n[the command was stopped: it wrote {self.max_command_file_bytes} "
                    "bytes, the most a command may write to one file]"
                )
        if outcome.error:
            return _error(outcome.error)
        if outcome.timed_out:
            text = f"timed out after {limit:g}s (process group killed)\noutput:\n{output}"
            return ToolOutcome(text, is_error=True)
        if outcome.interrupted:
            return ToolOutcome(f"stopped: the run was stopped\noutput:\n{output}", is_error=True)
        return ToolOutcome(f"exit code: {outcome.exit_code}\noutput:\n{output}")

    # ----- confinement ----------------------------------------------------------------------

    def _resolve(self, path: str, *, writing: bool = False) -> Path:
        """The real path of `path`, refused unless it is inside the workspace."""
        if "\0" in path:
            raise ToolRefused("path contains a NUL byte")
        relative = Path(path)
        if relative.is_absolute():
            raise ToolRefused(f"{path}: absolute paths are not allowed; use a relative path")
        if ".." in relative.parts:
            raise ToolRefused(f"{path}: '..' is not allowed in paths")
        try:
            target = (self.root / relative).resolve()
        except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13)
            raise ToolRefused(f"{path}: cannot be resolved (a symlink loop?)") from None
        if not target.is_relative_to(self.root):
            raise ToolRefused(f"{path}: leads outside the workspace (symlink)")
        if writing and ".git" in target.relative_to(self.root).parts:
            raise ToolRefused(f"{path}: the .git directory is managed by the fleet")
        return target

    def _existing_file(self, path: str, *, writing: bool = False) -> Path:
        target = self._resolve(path, writing=writing)
        if not target.is_file():
            raise ToolRefused(f"{path} is not a file" if target.exists() else f"{path} not found")
        self._check_size(target.stat().st_size, path, hint="; use search")
        return target

    def _check_size(self, size: int, what: str, hint: str = "") -> None:
        if size > self.max_file_bytes:
            raise ToolRefused(f"{what} is {size} bytes, over the {self.max_file_bytes} limit{hint}")

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.root)
        except (RuntimeError, OSError):  # a symlink loop
            return False

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if path != self.root else "."

    def _walk(self, start: Path) -> Iterator[Path]:
        """Files under `start` (or `start` itself), sorted; no symlinked directory is entered
        and files whose real path is outside the workspace are left out."""
        if start.is_file():
            yield start
            return
        for directory, dirs, files in os.walk(start):
            dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
            for name in sorted(files):
                file = Path(directory, name)
                if self._inside(file):
                    yield file

    def _text_lines(self, file: Path) -> Iterator[tuple[int, str]]:
        """Numbered lines of a text file; binary, oversized and unreadable files give none,
        nor does anything that is not a regular file (opening a FIFO would block)."""
        try:
            info = file.stat()
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_file_bytes:
                return
            data = file.read_bytes()
        except OSError:
            return
        if b"\0" in data[:BINARY_SNIFF_BYTES]:
            return
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            yield number, line[:MAX_LINE_CHARS]

    # ----- output caps ------------------------------------------------------------------------

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_output:
            return text
        return text[: self.max_output] + f"\n[output cut at {self.max_output} characters]"

    def _capped_log(self, log: Path) -> str:
        """The log, or its head and tail when it is longer than max_output (a test run's
        summary is at the end)."""
        if not log.exists():
            return ""
        size = log.stat().st_size
        with log.open("rb") as handle:
            if size <= self.max_output:
                return handle.read().decode("utf-8", errors="replace")
            head = handle.read(self.max_output // 4)
            handle.seek(size - (self.max_output - len(head)))
            tail = handle.read()
        omitted = size - len(head) - len(tail)
        return (
            head.decode("utf-8", errors="replace")
            + f"\n[... {omitted} bytes of output omitted ...]\n"
            + tail.decode("utf-8", errors="replace")
        )


def _encodable(value: Any) -> bool:
    """Whether every string in a tool input is valid Unicode: JSON can carry lone
    surrogates (\\ud800), which no file name, file or argument can hold."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError):
        return False
    return True


def _error(message: str) -> ToolOutcome:
    return ToolOutcome(json.dumps({"error": message}), is_error=True)


def _validation_summary(exc: ValidationError) -> str:
    """Field and problem only: the input values (maybe a whole file) are left out."""
    parts = [
        f"{'.'.join(str(loc) for loc in error['loc']) or 'input'}: {error['msg']}"
        for error in exc.errors()
    ]
    return "; ".join(parts)
