"""The fleet's settings: defaults of the original, YAML section, env fallback, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError
from flows.fleet.config import load_fleet_config
from flows.fleet.cost import Price, price_for
from flows.fleet.testbed import load_mock_issues
from tests.conftest import REPO, write_config

NEW_PRICE = "{input: 3, output: 15.0, cache_write: 3.75, cache_read: 0.3}"


def test_defaults_match_the_original() -> None:
    config = load_fleet_config(None, {})
    assert (config.max_revisions, config.max_agent_retries, config.retry_backoff_seconds) == (
        3,
        2,
        5,
    )
    assert config.auto_merge_on_approval is True
    assert config.labels.ready == "ready-for-dev"


def test_yaml_section_env_fallback_and_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKSPACE_DIR", "/srv/work")
    path = write_config(
        tmp_path, "fleet:\n  repo: acme/widgets\n  workers: 4\n  labels: {ready: go}\n"
    )
    config = load_fleet_config(path, {"workers": 6, "model": None})
    assert (config.repo, config.workers, config.workspace) == ("acme/widgets", 6, "/srv/work")
    assert config.labels.ready == "go" and config.model == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("text", "field", "problem"),
    [
        ("fleet:\n  repo: 'acme/widgets; rm -rf /'\n", "repo", "must match the pattern"),
        ("fleet:\n  workers: 0\n", "workers", "greater than 0"),
        ("fleet:\n  failure_rate: 1.5\n", "failure_rate", "less than or equal to 1"),
        ("fleet:\n  labels: {redy: x}\n", "labels.redy", "unknown key"),
        ("pipeline: {}\n", "fleet", "expected a mapping"),
        ("fleet:\n  repo: ../..\n", "repo", "not a repository name"),
        ("fleet:\n  agent_seconds: .inf\n", "agent_seconds", "finite number"),
        ("fleet:\n  retry_backoff_seconds: 1.0e+300\n", "retry_backoff_seconds", "less than"),
        ("fleet:\n  command_timeout: .nan\n", "command_timeout", "finite number"),
        ("fleet:\n  keep_failed_workspaces: 'yes'\n", "keep_failed_workspaces", "boolean"),
        ("fleet:\n  workers: '3'\n", "workers", "valid integer"),
        ("fleet:\n  workspace: ''\n", "workspace", "at least 1 character"),
        ("fleet:\n  checks_config: /etc/passwd\n", "checks_config", "relative path"),
        ("fleet:\n  checks_config: ../x.yml\n", "checks_config", "relative path"),
        ("fleet:\n  labels: {ready: ''}\n", "labels.ready", "at least 1 character"),
        ("fleet:\n  labels: {failed: 'a,b'}\n", "labels.failed", "must match"),
        (f"fleet:\n  labels: {{review: {'x' * 51}}}\n", "labels.review", "at most 50"),
        ("fleet:\n  labels: {ready: same, in_progress: same}\n", "labels", "must differ"),
        ("fleet:\n  labels: {priority_prefix: ''}\n", "labels.priority_prefix", "at least 1"),
        ("fleet:\n  model: my-model\n", "model", "no price for model 'my-model'"),
        ("fleet:\n  prices: {my-model: {input: -1, output: 1, cache_write: 1, cache_read: 1}}\n",
         "prices.my-model.input", "greater than 0"),
        # a free model would switch the per-issue budget off
        ("fleet:\n  prices: {claude-sonnet-4-5: {input: 3, output: 0, cache_write: 0, "
         "cache_read: 0}}\n", "prices.claude-sonnet-4-5.output", "greater than 0"),
        ("fleet:\n  prices: {my-model: {input: 1, output: 1, cache_write: -1, cache_read: 0}}\n",
         "prices.my-model.cache_write", "greater than or equal to 0"),
        ("fleet:\n  prices: {my-model: {input: abc, output: 1, cache_write: 1, cache_read: 1}}\n",
         "prices.my-model.input", "valid number"),
        ("fleet:\n  prices: {my-model: {input: 1, output: .inf, cache_write: 1, cache_read: 1}}\n",
         "prices.my-model.output", "finite number"),
        ("fleet:\n  prices: {my-model: {input: 1, output: 1, cache_write: no, cache_read: 1}}\n",
         "prices.my-model.cache_write", "valid number"),
        ("fleet:\n  prices: {my-model: {input: 1, output: 1, cache_write: 1}}\n",
         "prices.my-model.cache_read", "required field is missing"),
        ("fleet:\n  prices: {my-model: {input: 1, output: 1, cache_write: 1, cache_read: 1, "
         "batch: 1}}\n", "prices.my-model.batch", "unknown key"),
        ("fleet:\n  prices: {my-model: 3}\n", "prices.my-model", "dictionary"),
    ],
)  # fmt: skip
def test_bad_settings_name_file_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {})
    named = field if field == "fleet" else f"fleet.{field}"  # as the file has it
    assert str(error.value).startswith(f"{path}: {named}: ")
    assert problem in str(error.value)


def test_the_file_is_validated_before_the_command_line_overrides_it(tmp_path: Path) -> None:
    """A flag must not hide a mistake in the file that the next run without it would hit."""
    path = write_config(tmp_path, "fleet:\n  workers: 0\n")
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {"workers": 1})
    assert str(error.value).startswith(f"{path}: fleet.workers: ")


def test_a_bad_override_is_blamed_on_its_option(tmp_path: Path) -> None:
    path = write_config(tmp_path, "fleet:\n  workers: 2\n")
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {"mock_issues": -1})
    assert str(error.value).startswith("command line: --mock-issues: ")
    with pytest.raises(ConfigError) as error:
        load_fleet_config(None, {"agent_seconds": float("inf")})
    assert str(error.value).startswith("command line: --agent-seconds: ")


def test_a_bad_flow_parameter_is_blamed_on_the_parameter() -> None:
    """A deployment's run gets its overrides as a flow parameter, not as options."""
    with pytest.raises(ConfigError) as error:
        load_fleet_config(None, {"workers": 0}, from_command_line=False)
    assert str(error.value).startswith("flow parameters: overrides.workers: ")


def test_a_new_model_is_priced_from_the_config(tmp_path: Path) -> None:
    """`prices:` adds a model to the built-in table, or overrides one of it."""
    path = write_config(
        tmp_path,
        f"fleet:\n  model: my-model\n  prices:\n    my-model: {NEW_PRICE}\n"
        "    claude-haiku-4-5: {input: 2, output: 4, cache_write: 2.5, cache_read: 0.2}\n",
    )
    config = load_fleet_config(path, {})
    assert config.model == "my-model"
    assert price_for(config.model, config.prices) == Price(
        input=3, output=15, cache_write=3.75, cache_read=0.3
    )
    assert price_for("claude-haiku-4-5", config.prices).output == 4  # the config's wins
    assert price_for("claude-sonnet-4-5", config.prices).output == 15  # the rest built in
    # a model given on the command line is priced from the file
    assert load_fleet_config(path, {"model": "my-model"}).model == "my-model"


def test_a_model_without_a_price_says_where_to_give_it(tmp_path: Path) -> None:
    path = write_config(tmp_path, "fleet:\n  model: claude-sonnet-9\n")
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {})
    message = str(error.value)
    assert message.startswith(f"{path}: fleet.model: no price for model 'claude-sonnet-9': ")
    assert "under `prices` in the fleet config" in message
    assert "prices: {'claude-sonnet-9': {input: " in message  # an example of the entry
    with pytest.raises(ConfigError) as error:
        load_fleet_config(None, {"model": "claude-sonnet-9"})
    assert str(error.value).startswith("command line: --model: no price for model")


def test_a_mock_issues_file_is_found_from_where_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative to the config file in the file, to the working directory on the command
    line; absolute afterwards (runs in other directories find it); missing: named."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "issues.yml").write_text("- title: from the config's folder\n")
    (tmp_path / "cli.yml").write_text("- title: from the working directory\n")
    config = tmp_path / "conf" / "fleet.yml"
    config.write_text("fleet:\n  mock_issues_file: issues.yml\n")
    monkeypatch.chdir(tmp_path)
    settings = load_fleet_config(config, {})
    assert settings.mock_issues_file == str(tmp_path / "conf" / "issues.yml")
    settings = load_fleet_config(config, {"mock_issues_file": "cli.yml"})
    assert settings.mock_issues_file == str(tmp_path / "cli.yml")
    with pytest.raises(ConfigError, match=r"command line: --mock-issues-file: no such file: "):
        load_fleet_config(config, {"mock_issues_file": "issues.yml"})
    config.write_text("fleet:\n  mock_issues_file: ../cli.yml/x\n")
    with pytest.raises(ConfigError, match=r"fleet.yml: fleet.mock_issues_file: no such file: "):
        load_fleet_config(config, {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title: not a list\n", ": expected a list of issues"),
        ("- body: no title\n", ": [0].title: required field is missing"),
        ("- title: ''\n", ": [0].title:"),
        ("- title: t\n  labels: priority:1\n", ": [0].labels:"),
        ("- title: t\n  assignee: me\n", ": [0].assignee: unknown key"),
        (f"- title: t\n  body: {'x' * 70_000}\n", ": [0].body:"),
        ("- title: [unclosed\n", ": invalid YAML at line 2"),
    ],
)
def test_a_bad_mock_issues_file_names_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "issues.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_mock_issues(path)
    assert str(error.value).startswith(f"{path}{message}"), str(error.value)


def test_the_bundled_mock_issues_file_loads() -> None:
    issues = load_mock_issues(REPO / "examples" / "mock-issues.yml")
    assert len(issues) == 4 and issues[0].labels == ["priority:1", "enhancement"]
