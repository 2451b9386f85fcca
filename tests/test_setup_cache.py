"""The setup cache without Prefect: which caches pruning keeps, and a key that setup's
own files cannot change."""

from __future__ import annotations

import os
import time
from pathlib import Path

from flows.config import load_config
from flows.pipeline.setup import cache_in_use, plan_setup, run_setup
from tests.conftest import write_config


def setup_config(tmp_path: Path, version: int, cache_dir: str = "cache") -> Path:
    """A pipeline whose setup key changes with `version` (its key file's content)."""
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "deps.lock").write_text(f"v{version}\n")
    return write_config(tmp_path, f"""
        name: app
        workdir: app
        setup: {{run: ["true"], cache_key_files: ["**/*.lock"], cache_dir: {cache_dir}}}
        tasks: [{{name: a, priority: 1, run: "true"}}]
    """)  # fmt: skip


def build(tmp_path: Path, version: int) -> Path:
    config_path = setup_config(tmp_path, version)
    config = load_config(config_path)
    plan = plan_setup(config, config_path, tmp_path / "app")
    assert plan is not None
    summary = run_setup(plan, tmp_path / "app", dict(os.environ), tmp_path / "setup.log")
    assert summary.status == "succeeded"
    time.sleep(0.01)  # distinct marker times
    return plan.cache_dir


def test_pruning_keeps_the_most_recently_used_and_any_cache_in_use(tmp_path: Path) -> None:
    first, second, third = (build(tmp_path, version) for version in (1, 2, 3))
    again = build(tmp_path, 1)  # a hit: the first is now the most recently used
    assert again == first
    build(tmp_path, 4)
    assert first.exists() and not second.exists()  # the least recently used went

    config_path = setup_config(tmp_path, 3)
    plan = plan_setup(load_config(config_path), config_path, tmp_path / "app")
    with cache_in_use(plan):  # a run whose tasks use the third cache
        build(tmp_path, 5)
        build(tmp_path, 6)
        assert third.exists()  # the oldest, but in use
    build(tmp_path, 7)
    assert not third.exists()


def test_files_setup_writes_inside_the_workdir_do_not_change_the_key(tmp_path: Path) -> None:
    """With cache_dir inside the workdir, `**/*.lock` also matches the cache's own files."""
    config_path = setup_config(tmp_path, 1, cache_dir="app/.cache")
    keys = []
    for _ in range(3):
        plan = plan_setup(load_config(config_path), config_path, tmp_path / "app")
        assert plan is not None
        run_setup(plan, tmp_path / "app", dict(os.environ), tmp_path / "setup.log")
        (plan.cache_dir / "installed.lock").write_text("what setup installed\n")
        keys.append(plan.key)
    assert keys[0] == keys[1] == keys[2]
