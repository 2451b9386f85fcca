"""The agent's tools: confinement to the workspace, caps, run_command's timeout and env."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from flows.fleet.tools import Toolbox, ToolOutcome, scrubbed_env
from tests.conftest import wait_until_gone


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace with a file the agent must never see or change."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("TOP SECRET\n")
    return directory


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    directory = tmp_path / "workspace"
    (directory / "src").mkdir(parents=True)
    (directory / "src" / "app.py").write_text("def add(a, b):\n    return a + b\n")
    (directory / "README.md").write_text("# demo\n")
    return directory


@pytest.fixture
def box(workspace: Path) -> Toolbox:
    return Toolbox(workspace, command_timeout=10, max_output=5000)


def error_of(outcome: ToolOutcome) -> str:
    assert outcome.is_error, outcome.text
    message = json.loads(outcome.text)["error"]
    assert isinstance(message, str)
    return message


def test_schemas_are_in_the_messages_api_format(box: Toolbox) -> None:
    schemas = {tool["name"]: tool for tool in box.schemas()}
    assert set(schemas) == {
        "read_file", "write_file", "edit_file", "list_files", "search", "run_command",
    }  # fmt: skip
    for tool in schemas.values():
        assert tool["description"] and tool["input_schema"]["type"] == "object"
    assert schemas["edit_file"]["input_schema"]["required"] == ["path", "old", "new"]
    argv = schemas["run_command"]["input_schema"]["properties"]["argv"]
    assert argv["type"] == "array" and argv["items"] == {"type": "string"}


def test_schemas_are_built_once_but_handed_out_as_copies(box: Toolbox) -> None:
    first = box.schemas()
    first[0]["cache_control"] = {"type": "ephemeral"}
    first[0]["input_schema"]["properties"].clear()
    again = box.schemas()
    assert "cache_control" not in again[0] and again[0]["input_schema"]["properties"]


def test_read_write_edit_list_search(box: Toolbox, workspace: Path) -> None:
    read = box.call("read_file", {"path": "src/app.py"})
    assert not read.is_error
    assert read.text == "     1\tdef add(a, b):\n     2\t    return a + b"
    assert box.call("read_file", {"path": "src/app.py", "offset": 2, "limit": 1}).text == (
        "     2\t    return a + b\n[lines 2-2 of 2; use offset to read more]"
    )

    assert box.call("write_file", {"path": "docs/new.md", "content": "hello\n"}).text == (
        "wrote 6 bytes to docs/new.md"
    )
    assert (workspace / "docs" / "new.md").read_text() == "hello\n"

    edit = box.call("edit_file", {"path": "src/app.py", "old": "a + b", "new": "b + a"})
    assert not edit.is_error
    assert (workspace / "src" / "app.py").read_text() == "def add(a, b):\n    return b + a\n"

    assert box.call("list_files", {}).text == "README.md\ndocs/new.md\nsrc/app.py"
    assert box.call("list_files", {"path": "src", "pattern": "*.py"}).text == "src/app.py"
    assert box.call("search", {"pattern": r"return \w"}).text == "src/app.py:2: return b + a"
    assert box.call("search", {"pattern": "nowhere"}).text == "[no matches]"


@pytest.mark.parametrize("path", ["../outside/secret.txt", "/etc/passwd", "src/../../x"])
def test_traversal_and_absolute_paths_are_refused(box: Toolbox, path: str) -> None:
    for name, args in [
        ("read_file", {"path": path}),
        ("write_file", {"path": path, "content": "pwned"}),
        ("edit_file", {"path": path, "old": "a", "new": "b"}),
        ("list_files", {"path": path}),
        ("search", {"pattern": ".", "path": path}),
    ]:
        message = error_of(box.call(name, args))
        assert "absolute" in message or "'..'" in message


def test_symlinked_file_leading_outside_is_refused(
    box: Toolbox, workspace: Path, outside: Path
) -> None:
    (workspace / "link.txt").symlink_to(outside / "secret.txt")
    (workspace / "dangling").symlink_to(outside / "created-by-agent.txt")

    assert "outside the workspace" in error_of(box.call("read_file", {"path": "link.txt"}))
    write = box.call("write_file", {"path": "link.txt", "content": "overwritten"})
    assert "outside the workspace" in error_of(write)
    edit = box.call("edit_file", {"path": "link.txt", "old": "TOP", "new": "NOT"})
    assert "outside the workspace" in error_of(edit)
    assert "outside" in error_of(box.call("write_file", {"path": "dangling", "content": "x"}))
    search = box.call("search", {"pattern": "SECRET"})
    assert search.text == "[no matches]"  # the walk does not read through the link

    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"
    assert not (outside / "created-by-agent.txt").exists()


def test_symlinked_directory_leading_outside_is_refused(
    box: Toolbox, workspace: Path, outside: Path
) -> None:
    (workspace / "linked").symlink_to(outside, target_is_directory=True)

    assert "outside" in error_of(box.call("read_file", {"path": "linked/secret.txt"}))
    assert "outside" in error_of(box.call("write_file", {"path": "linked/new.txt", "content": ""}))
    assert "outside" in error_of(box.call("list_files", {"path": "linked"}))
    assert "linked" not in box.call("list_files", {}).text
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_symlink_inside_the_workspace_is_followed(box: Toolbox, workspace: Path) -> None:
    (workspace / "alias.py").symlink_to(workspace / "src" / "app.py")
    assert "return a + b" in box.call("read_file", {"path": "alias.py"}).text


def test_git_directory_is_not_writable(box: Toolbox, workspace: Path) -> None:
    (workspace / ".git" / "hooks").mkdir(parents=True)
    write = box.call("write_file", {"path": ".git/hooks/pre-commit", "content": "#!/bin/sh"})
    assert ".git" in error_of(write)
    assert not (workspace / ".git" / "hooks" / "pre-commit").exists()


def test_edit_file_needs_exactly_one_match(box: Toolbox, workspace: Path) -> None:
    original = (workspace / "src" / "app.py").read_text()
    twice = box.call("edit_file", {"path": "src/app.py", "old": "a", "new": "x"})
    assert "occurs" in error_of(twice) and "times" in error_of(twice)
    absent = box.call("edit_file", {"path": "src/app.py", "old": "missing", "new": "x"})
    assert "not found" in error_of(absent)
    missing_file = box.call("edit_file", {"path": "nope.py", "old": "a", "new": ""})
    assert "not found" in error_of(missing_file)
    assert (workspace / "src" / "app.py").read_text() == original


def test_file_size_caps(workspace: Path) -> None:
    box = Toolbox(workspace, command_timeout=5, max_output=5000, max_file_bytes=100)
    (workspace / "big.txt").write_text("x" * 101)
    assert "limit" in error_of(box.call("read_file", {"path": "big.txt"}))
    assert "limit" in error_of(box.call("write_file", {"path": "out.txt", "content": "y" * 101}))
    assert not (workspace / "out.txt").exists()
    (workspace / "blob.bin").write_bytes(b"\0\1\2")
    assert "binary" in error_of(box.call("read_file", {"path": "blob.bin"}))


def test_unknown_tool_and_bad_inputs_are_errors(box: Toolbox) -> None:
    assert "unknown tool 'rm_rf'" in error_of(box.call("rm_rf", {"path": "."}))
    assert "path: Field required" in error_of(box.call("read_file", {}))
    assert "path" in error_of(box.call("read_file", {"path": 3}))
    assert "Extra inputs" in error_of(box.call("read_file", {"path": "README.md", "mode": "w"}))
    assert "argv" in error_of(box.call("run_command", {"argv": []}))
    assert error_of(box.call("read_file", None))
    assert "regular expression" in error_of(box.call("search", {"pattern": "("}))


def test_a_symlink_loop_is_refused_or_skipped_not_raised(box: Toolbox, workspace: Path) -> None:
    """A repository may track a symlink loop: the tools refuse that path and walk past it."""
    (workspace / "loop").symlink_to("loop")
    (workspace / "a").symlink_to("b")
    (workspace / "b").symlink_to("a")

    assert "symlink loop" in error_of(box.call("read_file", {"path": "loop"}))
    assert "symlink loop" in error_of(box.call("write_file", {"path": "a", "content": "x"}))
    assert box.call("list_files", {}).text == "README.md\nsrc/app.py"
    assert box.call("search", {"pattern": "return"}).text == "src/app.py:2: return a + b"


def test_text_that_is_not_unicode_is_an_error(box: Toolbox, workspace: Path) -> None:
    """JSON can carry lone surrogates; no path, file or argument can hold them."""
    for name, tool_input in [
        ("read_file", {"path": "\ud800.py"}),
        ("write_file", {"path": "new.py", "content": "x = '\ud800'"}),
        ("edit_file", {"path": "README.md", "old": "demo", "new": "\udfff"}),
        ("run_command", {"argv": ["echo", "\ud800"]}),
    ]:
        assert "surrogates" in error_of(box.call(name, tool_input)), name
    assert not (workspace / "new.py").exists()
    assert (workspace / "README.md").read_text() == "# demo\n"


def test_search_refuses_patterns_it_cannot_compile(box: Toolbox) -> None:
    assert "regular expression" in error_of(box.call("search", {"pattern": "a{4294967296}"}))
    assert "regular expression" in error_of(box.call("search", {"pattern": "(" * 500}))


def test_search_stops_a_pattern_that_backtracks_without_end(
    box: Toolbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flows.fleet.tools.SEARCH_TIMEOUT_S", 0.5)
    (workspace / "data.txt").write_text("a" * 60 + "!\n")
    started = time.monotonic()
    message = error_of(box.call("search", {"pattern": "^(a|aa)+$"}))
    assert "search stopped after 0.5s" in message
    assert time.monotonic() - started < 5


def test_tools_skip_or_refuse_what_is_not_a_regular_file(box: Toolbox, workspace: Path) -> None:
    """Opening a FIFO would wait for a writer (or a reader) forever."""
    os.mkfifo(workspace / "pipe")
    started = time.monotonic()
    assert box.call("search", {"pattern": "return"}).text == "src/app.py:2: return a + b"
    assert time.monotonic() - started < 5
    assert "not a file" in error_of(box.call("read_file", {"path": "pipe"}))
    write = box.call("write_file", {"path": "pipe", "content": "x"})
    assert "not a regular file" in error_of(write)


def test_a_tool_that_fails_unexpectedly_is_an_error_not_a_crash(
    box: Toolbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Toolbox, path: str = ".", pattern: str | None = None) -> str:
        raise RuntimeError("walk broke")

    monkeypatch.setattr(Toolbox, "list_files", broken)
    assert error_of(box.call("list_files", {})) == "list_files failed: RuntimeError: walk broke"


def test_run_command_exit_code_and_output(box: Toolbox, workspace: Path) -> None:
    outcome = box.call("run_command", {"argv": ["sh", "-c", "pwd; echo oops >&2; exit 3"]})
    assert not outcome.is_error
    assert outcome.text == f"exit code: 3\noutput:\n{workspace.resolve()}\noops\n"
    missing = box.call("run_command", {"argv": ["no-such-program-here"]})
    assert "cannot start" in error_of(missing)


def test_run_command_argv_is_not_a_shell(box: Toolbox) -> None:
    outcome = box.call("run_command", {"argv": ["echo", "$HOME; rm -rf /"]})
    assert outcome.text.endswith("$HOME; rm -rf /\n")


def test_run_command_timeout_kills_the_process_group(workspace: Path) -> None:
    box = Toolbox(workspace, command_timeout=0.5, max_output=5000)
    script = "sleep 300 & echo $! > grandchild.pid; wait"
    started = time.monotonic()
    outcome = box.call("run_command", {"argv": ["sh", "-c", script], "timeout": 60})
    assert outcome.is_error and "timed out after 0.5s" in outcome.text  # capped at the maximum
    assert time.monotonic() - started < 5
    assert wait_until_gone(int((workspace / "grandchild.pid").read_text()))


def test_run_command_env_has_no_secrets(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_fakefakefake")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fakefakefake")
    monkeypatch.setenv("DB_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("LANG", "C.UTF-8")
    box = Toolbox(workspace, 10, 5000, env={"AWS_SECRET_ACCESS_KEY": "aws-fake", "CI": "true"})
    outcome = box.call("run_command", {"argv": ["env"]})
    assert not outcome.is_error
    env = dict(line.split("=", 1) for line in outcome.text.splitlines()[2:] if "=" in line)
    for leaked in ("ghp_fake", "sk-ant-fake", "hunter2", "aws-fake"):
        assert leaked not in outcome.text
    assert not {"GITHUB_TOKEN", "ANTHROPIC_API_KEY", "DB_PASSWORD"} & set(env)
    assert env["LANG"] == "C.UTF-8" and env["CI"] == "true" and env["PATH"]
    assert env["HOME"] != os.environ.get("HOME")
    assert not Path(env["HOME"]).is_relative_to(workspace.resolve())


def test_scrubbed_env_drops_secret_names(tmp_path: Path) -> None:
    source = {"PATH": "/bin", "HOME": "/root", "SSH_AUTH_SOCK": "/tmp/agent", "USER": "me"}
    extra = {"npm_config__authToken": "x", "MY_API_KEY": "y", "EXTRA": "ok"}
    env = scrubbed_env(source, tmp_path, extra)
    assert env["PATH"] == "/bin" and env["HOME"] == str(tmp_path) and env["EXTRA"] == "ok"
    assert not {"SSH_AUTH_SOCK", "USER", "npm_config__authToken", "MY_API_KEY"} & set(env)


def test_a_command_that_writes_without_end_is_stopped(workspace: Path) -> None:
    """`yes` would fill the disk with its output until its timeout."""
    box = Toolbox(workspace, command_timeout=60, max_output=1000, max_command_file_bytes=10**6)
    started = time.monotonic()
    outcome = box.call("run_command", {"argv": ["sh", "-c", "yes; echo after"]})
    assert time.monotonic() - started < 30
    assert "the command was stopped: it wrote 1000000 bytes" in outcome.text
    big = box.call("run_command", {"argv": ["sh", "-c", "head -c 2000000 /dev/zero > big.bin"]})
    assert "exit code: 0" not in big.text
    assert (workspace / "big.bin").stat().st_size == 10**6  # any file it writes
    limits = box.call("run_command", {"argv": ["grep", "Max file size", "/proc/self/limits"]})
    assert limits.text.split("output:")[1].split()[3:5] == ["1000000", "1000000"]  # from exec


def test_run_command_output_is_capped(workspace: Path) -> None:
    box = Toolbox(workspace, command_timeout=10, max_output=1000)
    script = "print('HEAD'); print('x' * 100_000); print('TAIL')"
    outcome = box.call("run_command", {"argv": [sys.executable, "-c", script]})
    assert not outcome.is_error
    assert len(outcome.text) < 1200
    assert "HEAD" in outcome.text and outcome.text.rstrip().endswith("TAIL")
    assert "bytes of output omitted" in outcome.text


def test_read_and_list_outputs_are_capped(workspace: Path) -> None:
    box = Toolbox(workspace, command_timeout=5, max_output=500)
    (workspace / "long.txt").write_text("line\n" * 1000)
    read = box.call("read_file", {"path": "long.txt"})
    assert len(read.text) < 600 and read.text.endswith("[output cut at 500 characters]")
    for index in range(100):
        (workspace / f"f{index:03d}.txt").write_text("")
    assert box.call("list_files", {}).text.endswith("[output cut at 500 characters]")
