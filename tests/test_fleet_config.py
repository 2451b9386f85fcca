"""The fleet's settings: defaults of the original, YAML section, env fallback, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError
from flows.fleet.config import load_fleet_config
from tests.conftest import write_config


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
    ],
)
def test_bad_settings_name_file_and_field(
    tmp_path: Path, text: str, field: str, problem: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {})
    assert str(error.value).startswith(f"{path}: {field}: ")
    assert problem in str(error.value)


def test_the_file_is_validated_before_the_command_line_overrides_it(tmp_path: Path) -> None:
    """A flag must not hide a mistake in the file that the next run without it would hit."""
    path = write_config(tmp_path, "fleet:\n  workers: 0\n")
    with pytest.raises(ConfigError) as error:
        load_fleet_config(path, {"workers": 1})
    assert str(error.value).startswith(f"{path}: workers: ")


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
