"""Bad configs give one clear message naming file, field and problem, exit code 2, and
nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError, load_config, read_yaml, resolve_config_path
from flows.deploy import main
from tests.conftest import write_config

GOOD_TASK = '{name: lint, priority: 1, run: "true"}'
TASK = GOOD_TASK.removesuffix("}")  # to add keys: f"{TASK}, timeout: 5}}"


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
        # paths that would leave the workdir, or that pathlib's glob cannot take
        (f'name: x\ntasks: [{TASK}, artifacts: [ok.txt, "../../etc/hostname"]}}]\n',
         "tasks[0].artifacts[1]", "a relative path that stays inside its folder (no '..')"),
        (f'name: x\ntasks: [{TASK}, artifacts: ["dist/**/../../x"]}}]\n',
         "tasks[0].artifacts[0]", "(no '..')"),
        (f'name: x\ntasks: [{TASK}, artifacts: [/etc/hostname]}}]\n', "tasks[0].artifacts[0]",
         "must be a relative path"),
        (f'name: x\nsetup: {{run: ["true"], cache_key_files: [/etc/passwd]}}\ntasks: [{TASK}}}]\n',
         "setup.cache_key_files[0]", "must be a relative path"),
        (f'name: x\nsetup: {{run: ["true"], cache_key_files: [""]}}\ntasks: [{TASK}}}]\n',
         "setup.cache_key_files[0]", "the path is empty"),
        (f'name: x\nsetup: {{run: ["true"], cache_key_files: [../nope.lock]}}\n'
         f"tasks: [{TASK}}}]\n", "setup.cache_key_files[0]", "no file matches '../nope.lock'"),
        (f"name: x\ntasks: [{TASK}, timeout: 1e3}}]\n", "tasks[0].timeout",
         "write 1000 or 1.0e+3"),
        # paths that are files where a folder is needed
        (f"name: x\nworkdir: pipeline.yml\ntasks: [{GOOD_TASK}]\n", "workdir", "is not a folder"),
        (f'name: x\nsetup: {{run: ["true"], cache_dir: pipeline.yml}}\ntasks: [{TASK}}}]\n',
         "setup.cache_dir", "pipeline.yml' is not a folder"),
        # seconds: finite and bounded
        (f"name: x\ntasks: [{TASK}, timeout: 1.0e+300}}]\n", "tasks[0].timeout",
         "less than or equal to 604800"),
        (f"name: x\ntasks: [{TASK}, retry_delay: 1.0e+300}}]\n", "tasks[0].retry_delay",
         "less than or equal to 86400"),
        (f"name: x\ndefaults: {{timeout: .inf}}\ntasks: [{GOOD_TASK}]\n", "defaults.timeout",
         "finite number"),
        (f"name: x\ndefaults: {{retry_delay: .nan}}\ntasks: [{GOOD_TASK}]\n",
         "defaults.retry_delay", "finite number"),
        (f'name: x\nsetup: {{run: ["true"], timeout: .inf}}\ntasks: [{TASK}}}]\n', "setup.timeout",
         "finite number"),
        # no type coercion
        (f"name: x\ntasks: [{TASK}, timeout: true}}]\n", "tasks[0].timeout", "valid number"),
        (f'name: x\ntasks: [{TASK}, timeout: "5"}}]\n', "tasks[0].timeout",
         "valid number; got '5' (a quoted number is text: leave out the quotes)"),
        ('name: x\ntasks: [{name: a, priority: 1, run: [echo, 3]}]\n', "tasks[0].run[1]",
         "Input should be a valid string; got 3"),  # the entry, not "not a string"
        (f'name: x\nsetup: {{run: ["true"], path: [../bin]}}\ntasks: [{TASK}}}]\n',
         "setup.path[0]", "must be a relative path that stays inside its folder"),
        (f'name: x\nfail_fast: "yes"\ntasks: [{GOOD_TASK}]\n', "fail_fast", "valid boolean"),
        (f"name: x\ntasks: [{TASK}, continue_on_error: 1}}]\n", "tasks[0].continue_on_error",
         "valid boolean"),
        (f"name: x\ntasks: [{TASK}, skip_exit_codes: [true]}}]\n", "tasks[0].skip_exit_codes[0]",
         "valid integer"),
        (f'name: x\ntasks: [{TASK}, skip_exit_codes: ["77"]}}]\n', "tasks[0].skip_exit_codes[0]",
         "valid integer"),
        (f"name: x\ntasks: [{TASK}, skip_exit_codes: [77, 256]}}]\n",
         "tasks[0].skip_exit_codes[1]", "less than or equal to 255"),
        (f"name: x\ndefaults: {{skip_exit_codes: [-1]}}\ntasks: [{GOOD_TASK}]\n",
         "defaults.skip_exit_codes[0]", "greater than or equal to 0"),
        # configs that validate but could not run
        (f'name: x\ntasks: [{TASK}, env: {{"A=B": x}}}}]\n', "tasks[0].env",
         "invalid variable name 'A=B'"),
        (f'name: x\ntasks: [{TASK}, env: {{"": x}}}}]\n', "tasks[0].env",
         "invalid variable name ''"),
        (f'name: x\ntasks: [{TASK}, env: {{A: "a\\0b"}}}}]\n', "tasks[0].env",
         "the value of A contains a NUL byte"),
        (f'name: x\nsetup: {{run: ["true"], env: {{"A=B": x}}}}\ntasks: [{TASK}}}]\n',
         "setup.env", "invalid variable name 'A=B'"),
        ('name: x\ntasks: [{name: a, priority: 1, run: [""]}]\n', "tasks[0].run",
         "the program (first item) is empty"),
        ("name: x\ntasks: [{name: a, priority: 1, run: []}]\n", "tasks[0].run",
         "the command list is empty"),
        ('name: x\ntasks: [{name: a, priority: 1, run: "echo \\0"}]\n', "tasks[0].run",
         "NUL byte"),
        (f'name: x\nsetup: {{run: ["true", "  "]}}\ntasks: [{TASK}}}]\n', "setup.run[1]",
         "command is empty"),
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


def symlink_loop(tmp_path: Path) -> Path:
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    return tmp_path / "loop1"


@pytest.mark.parametrize(
    ("name", "reason"),
    [("pipeline.yml/x.yml", "Not a directory"), ("a" * 300 + ".yml", "File name too long")],
)
def test_unreadable_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str
) -> None:
    write_config(tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\n")
    path = tmp_path / name
    assert main(["pipeline", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"error: {path}: cannot read the file ({reason})\n"


def test_symlink_loop_as_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loop = symlink_loop(tmp_path)
    with pytest.raises(ConfigError, match=r"loop1: cannot read the file \(Too many levels of"):
        read_yaml(loop)
    with pytest.raises(ConfigError, match=r"loop1: cannot read the file \(symlink loop\)$"):
        resolve_config_path(loop)  # what pathlib's resolve() raises as RuntimeError
    assert main(["fleet", "--mode", "test", "--config", str(loop)]) == 2  # same helper
    assert capsys.readouterr().err.startswith(f"error: {loop}: cannot read the file (")


def test_duplicate_yaml_key_names_key_and_line(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\nfail_fast: true\ntasks: [{GOOD_TASK}]\n"
    )
    with pytest.raises(ConfigError, match=r"line 4, column 1: duplicate key 'tasks'$"):
        load_config(config)
    nested = write_config(
        tmp_path, 'name: x\ntasks: [{name: a, priority: 1, run: "true", run: x}]\n'
    )
    with pytest.raises(ConfigError, match="line 2, column 45: duplicate key 'run'"):
        load_config(nested)
    merged = write_config(
        tmp_path, "base: &b {priority: 1, run: x}\nt: {<<: *b, run: y, name: a}\n", "merge.yml"
    )
    assert read_yaml(merged)["t"] == {"priority": 1, "run": "y", "name": "a"}  # an override


@pytest.mark.parametrize(
    ("report_dir", "problem"),
    [
        ("pipeline.yml", "'{tmp}/pipeline.yml' is not a folder"),
        ("pipeline.yml/sub", "'{tmp}/pipeline.yml' is not a folder"),
        ("loop1", "cannot resolve '{tmp}/loop1' (symlink loop)"),
    ],
)
def test_report_dir_that_cannot_be_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], report_dir: str, problem: str
) -> None:
    marker = tmp_path / "ran"
    config = write_config(
        tmp_path, f'name: x\ntasks: [{{name: a, priority: 1, run: "touch {marker}"}}]\n'
    )
    symlink_loop(tmp_path)
    assert (
        main(["pipeline", "--config", str(config), "--report-dir", str(tmp_path / report_dir)]) == 2
    )
    problem = problem.format(tmp=tmp_path)
    assert capsys.readouterr().err == f"error: command line: --report-dir: {problem}\n"
    assert not marker.exists()


def test_default_report_dir_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\n")
    (tmp_path / ".pipeline").write_text("")
    assert main(["pipeline", "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {config}: workdir: '{tmp_path / '.pipeline'}' is not a folder\n"


def test_checking_a_new_report_dir_creates_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"name: x\ntasks: [{GOOD_TASK}]\n")
    args = ["--report-dir", str(tmp_path / "new" / "report"), "--dry-run"]
    assert main(["pipeline", "--config", str(config), *args]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yml"]


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
        defaults: {timeout: 30, retries: 2, retry_delay: 0.5, skip_exit_codes: [0, 77, 255]}
        tasks:
          - {name: a, priority: 2, run: "true"}
          - {name: b, priority: 1, run: ["echo", "hi"], retries: 0}
        """,
    )
    loaded = load_config(config)
    assert loaded.tasks[1].run == ["echo", "hi"]
    assert loaded.scaling.max_parallel == 50
    assert loaded.defaults.timeout == 30
    assert loaded.defaults.retry_delay == 0.5 and isinstance(loaded.defaults.timeout, float)


def test_cache_key_files_may_reach_up_from_the_workdir(tmp_path: Path) -> None:
    """A monorepo's lockfile often sits above the app's folder; it is only read."""
    from flows.pipeline.setup import cache_key, plan_setup

    (tmp_path / "app").mkdir()
    (tmp_path / "uv.lock").write_text("v1\n")
    config_path = write_config(tmp_path, f"""
        name: x
        workdir: app
        setup: {{run: ["true"], cache_key_files: [../uv.lock], cache_dir: cache}}
        tasks: [{GOOD_TASK}]
    """)  # fmt: skip
    config = load_config(config_path)
    assert config.setup is not None
    first = cache_key(config.setup, tmp_path / "app", config_path)
    (tmp_path / "uv.lock").write_text("v2\n")
    assert cache_key(config.setup, tmp_path / "app", config_path) != first
    assert plan_setup(config, config_path, tmp_path / "app") is not None


def test_checking_a_folder_from_parallel_threads_never_fails(tmp_path: Path) -> None:
    """The checks of parallel issues check the one setup cache folder at the same time."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.config import resolve_folder

    missing = tmp_path / "cache" / "setup"

    def check(_: int) -> Path:
        return resolve_folder(missing, "test", "cache_dir")

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(check, range(400))) == {missing}
    assert not (tmp_path / "cache").exists()
