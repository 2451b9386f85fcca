"""The setup step: install dependencies once into a cache keyed on the lockfiles' hash.

The cache is a folder `<root>/<pipeline>/<key>/` that setup commands fill (through
$PIPELINE_CACHE_DIR) and every worker reuses (through $PIPELINE_CACHE_DIR and PATH). A
`.complete` marker, written only after every command succeeded, makes the next run with
the same key a cache hit; a folder without it (a failed or killed setup) is wiped and
rebuilt. A file lock serialises two runs that need the same key at the same time.

Prefect's own task cache is not used as the source of truth on purpose: it would report a
hit after the installed files were deleted (a fresh clone, a cleaned cache).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flows.commands import RunStop, read_tail, run_command
from flows.config import Command, ConfigError, PipelineConfig, SetupConfig, resolve_folder
from flows.locks import file_lock
from flows.removal import remove_tree
from flows.report import SetupSummary

logger = logging.getLogger(__name__)

MARKER = ".complete"
CACHE_ENV = "PIPELINE_CACHE_DIR"
KEEP_CACHES = 3


@dataclass(frozen=True)
class SetupPlan:
    commands: tuple[Command, ...]
    key: str
    cache_dir: Path
    path: tuple[str, ...]
    env: Mapping[str, str]
    timeout: float

    @property
    def hit(self) -> bool:
        return (self.cache_dir / MARKER).is_file()


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "prefect-parallel-agents" / "setup"


def plan_setup(
    config: PipelineConfig, config_path: Path, workdir: Path, cache_root: Path | None = None
) -> SetupPlan | None:
    """Resolve the setup of a config; raise ConfigError for a missing cache key file or a
    cache folder that cannot be one."""
    setup = config.setup
    if setup is None:
        return None
    if cache_root is not None:
        cache_root = resolve_folder(cache_root, "flow parameters", "cache_root")
    elif setup.cache_dir:
        cache_root = resolve_folder(
            config_path.parent / setup.cache_dir, config_path, "setup.cache_dir"
        )
    else:
        cache_root = resolve_folder(default_cache_root(), "environment", "XDG_CACHE_HOME")
    key = cache_key(setup, workdir, config_path, ignore=cache_root)
    return SetupPlan(
        commands=tuple(setup.run),
        key=key,
        cache_dir=cache_root / config.name / key,
        path=tuple(setup.path),
        env=dict(setup.env),
        timeout=setup.timeout,
    )


def cache_key(
    setup: SetupConfig, workdir: Path, config_path: Path, ignore: Path | None = None
) -> str:
    """sha256 over the setup's commands and settings and the content of its key files;
    files under `ignore` (the cache root, when it is inside the workdir: what setup itself
    writes) are left out, or every run would change the next one's key."""
    digest = hashlib.sha256()
    digest.update(json.dumps([setup.run, setup.path, setup.env], sort_keys=True).encode())
    for index, pattern in enumerate(setup.cache_key_files):
        matches = sorted(
            p
            for p in workdir.glob(pattern)
            if p.is_file() and not (ignore and p.resolve().is_relative_to(ignore))
        )
        if not matches:
            raise ConfigError(
                config_path,
                f"setup.cache_key_files[{index}]",
                f"no file matches {pattern!r} in {workdir}",
            )
        for path in matches:
            digest.update(str(path.relative_to(workdir)).encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cache_env(plan: SetupPlan | None, base: Mapping[str, str]) -> dict[str, str]:
    """The environment setup commands and workers run with."""
    env = dict(base)
    if plan is None:
        return env
    env.update(plan.env)
    env[CACHE_ENV] = str(plan.cache_dir)
    if plan.path:
        extra = [str(plan.cache_dir / entry) for entry in plan.path]
        env["PATH"] = os.pathsep.join([*extra, env.get("PATH", os.defpath)])
    return env


def run_setup(
    plan: SetupPlan,
    workdir: Path,
    env: Mapping[str, str],
    log_path: Path,
    stop: RunStop | None = None,
) -> SetupSummary:
    """Reuse the cache for `plan.key` or build it; never raises for a failing command. A
    `stop` kills its commands (the setup then fails: the cache is not marked done)."""
    started = time.perf_counter()
    plan.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    with file_lock(plan.cache_dir.with_name(plan.cache_dir.name + ".lock")):
        if plan.hit:
            os.utime(plan.cache_dir / MARKER)  # pruning keeps the most recently used
            log_path.write_text(f"cache hit: {plan.cache_dir}\n")
            return _summary(plan, started, hit=True, ok=True, log_path=log_path)
        if plan.cache_dir.exists():
            remove_tree(plan.cache_dir)  # left by a failed or killed setup
        plan.cache_dir.mkdir()
        for command in plan.commands:
            with log_path.open("a") as log:
                log.write(f"$ {command}\n")
            outcome = run_command(command, cwd=workdir, env=env, timeout=plan.timeout,
                                  log_path=log_path, stop=stop)  # fmt: skip
            if not outcome.ok:
                return _summary(plan, started, hit=False, ok=False, log_path=log_path)
        (plan.cache_dir / MARKER).write_text(
            json.dumps({"key": plan.key, "created_at": datetime.now(UTC).isoformat()})
        )
    prune_old_caches(plan.cache_dir.parent, keep=KEEP_CACHES)
    return _summary(plan, started, hit=False, ok=True, log_path=log_path)


def prune_old_caches(pipeline_root: Path, keep: int) -> None:
    """Remove all but the `keep` most recently used caches of one pipeline, skipping any
    that is being built or used (see `cache_in_use`)."""
    done = []
    for path in pipeline_root.iterdir():
        with suppress(FileNotFoundError, NotADirectoryError):  # unfinished, lock, or gone
            done.append(((path / MARKER).stat().st_mtime, path))
    for _, old in sorted(done, reverse=True)[keep:]:
        with (
            file_lock(old.with_name(old.name + ".lock"), blocking=False) as building,
            file_lock(_use_lock(old), blocking=False) as used,
        ):
            if building and used:
                try:
                    remove_tree(old)
                except OSError as exc:  # kept; the next run's pruning tries again
                    logger.warning("could not delete the old setup cache %s: %s", old, exc)


@contextmanager
def cache_in_use(plan: SetupPlan | None) -> Iterator[None]:
    """Hold the setup cache of `plan` for a run's whole length (a shared lock), so that no
    other run, building another key, prunes it while this one's tasks still use it."""
    if plan is None:
        yield
        return
    plan.cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(_use_lock(plan.cache_dir), shared=True):
        yield


def _use_lock(cache_dir: Path) -> Path:
    return cache_dir.with_name(cache_dir.name + ".use")


def _summary(
    plan: SetupPlan, started: float, *, hit: bool, ok: bool, log_path: Path
) -> SetupSummary:
    return SetupSummary(
        cache_hit=hit,
        duration_s=round(time.perf_counter() - started, 3),
        status="succeeded" if ok else "failed",
        key=plan.key,
        cache_dir=str(plan.cache_dir),
        log_tail="" if ok else read_tail(log_path),
    )
