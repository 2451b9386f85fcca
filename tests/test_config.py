"""Bad configs give one clear message naming file, field and problem, exit code 2, and
nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError, load_config
from flows.deploy import main
from tests.conftest import write_config

GOOD_TASK = '{name: lint, priority: 1, run: "true"}'


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ("name: x\ntasks: []\n", "tasks", "at least 1 item"),
        ("name: x\n", "tasks", "required field is missing"),
        (f"name: x\ntasks: [{GOOD_TASK}]\nbogus: 1\n", "bogus", "unknown key"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "true", tmeout: 5}]\n',
         "tasks[0].tmeout", "unknown key"),
        (f"name: x\ntasks: [{GOOD_TASK}, {GOOD_TASK}]\n", "tasks[1].name",
         "duplicate task name 'lint'"),
        ('name: x\ntasks: [{name: "Lint Backend", priority: 1, run: "true"}]\n',
         "tasks[0].name", "must match [a-z0-9-]+"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "true", timeout: 0}]\n',
         "tasks[0].timeout", "greater than 0"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "true", timeout: -3}]\n',
         "tasks[0].timeout", "greater than 0"),
        ("name: x\nscaling: {max_parallel: 0}\ntasks: [" + GOOD_TASK + "]\n",
         "scaling.max_parallel", "greater than 0"),
        ('name: x\ntasks: [{name: a, priority: 0, run: "true"}]\n', "tasks[0].priority",
         "greater than 0"),
        ('name: x\ntasks: [{name: a, priority: "1", run: "true"}]\n', "tasks[0].priority",
         "valid integer"),
        ('name: x\ntasks: [{name: a, priority: 1.5, run: "true"}]\n', "tasks[0].priority",
         "valid integer"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "  "}]\n', "tasks[0].run",
         "command is empty"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "true", retries: -1}]\n',
         "tasks[0].retries", "greater than or equal to 0"),
        (f"name: x\nworkdir: missing-dir\ntasks: [{GOOD_TASK}]\n", "workdir", "does not exist"),
        ("name: x\nsetup: {run: [\"true\"], cache_key_files: [nope.lock]}\n"
         f"tasks: [{GOOD_TASK}]\n", "setup.cache_key_files[0]", "no file matches 'nope.lock'"),
    ],
)  # fmt: skip
def test_bad_config_names_file_field_and_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, field: str, problem: str
) -> None:
    marker = tmp_path / "ran"
    config = write_config(tmp_path, body.replace('"true"', f'"touch {marker}"'))
    exit_code = main(["pipeline", "--config", str(config)])
    err = capsys.readouterr().err
    assert exit_code == 2
    assert err.startswith(f"error: {config}: {field}: ")
    assert problem in err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pipeline", "--config", str(tmp_path / "nope.yml")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.yml'}: file not found\n"


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, "name: x\ntasks:\n  - {name: a, priority: 1\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(config)


def test_not_a_mapping(tmp_path: Path) -> None:
    config = write_config(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(config)


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_bad_max_parallel_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    config = write_config(tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "--config", str(config), "--max-parallel", value])
    assert exit_info.value.code == 2
    assert "--max-parallel: expected a positive integer" in capsys.readouterr().err


def test_good_config_applies_defaults(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        name: demo
        defaults: {timeout: 30, retries: 2}
        tasks:
          - {name: a, priority: 2, run: "true"}
          - {name: b, priority: 1, run: ["echo", "hi"], retries: 0}
        """,
    )
    loaded = load_config(config)
    assert loaded.tasks[1].run == ["echo", "hi"]
    assert loaded.scaling.max_parallel == 50
    assert loaded.defaults.timeout == 30
