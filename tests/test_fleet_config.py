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
