"""Shared fixtures: a real Prefect server (SQLite in a temporary PREFECT_HOME) for the
session, and helpers to write pipeline configs into temporary repos."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows._prefect import local_server
from flows.fleet.tracker import Labels
from tests.fakes.github_api import FakeGitHub

REPO = Path(__file__).resolve().parent.parent
GITHUB_TOKEN = "ghp-sekrit-0123456789abcdef"
LABELS = Labels()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback stand-ins must never be reached through a proxy from the environment."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def no_anthropic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The anthropic SDK reads these from the environment: tests give their own."""
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    """A loopback GitHub serving acme/widgets, which has the fleet's labels."""
    with FakeGitHub(token=GITHUB_TOKEN, owner="acme", repo="widgets") as fake:
        for name in LABELS.names():
            fake.add_label(name)
        yield fake


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `prefect server start` with its own PREFECT_HOME; yields its API URL."""
    with (
        local_server(home=tmp_path_factory.mktemp("prefect-home"), startup_timeout=180) as url,
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield f"{url}/api"


@pytest.fixture
def cli_env(prefect_server: str) -> dict[str, str]:
    """Environment for `python -m flows.deploy` subprocesses that use the test server."""
    return {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO)}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m flows.deploy ARGS` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "flows.deploy", *args], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip


def write_config(directory: Path, text: str, name: str = "pipeline.yml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def process_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (in containers PID 1 may reap late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def wait_for_file(path: Path, timeout: float = 30.0) -> str:
    """The content of `path` once something has written it (a test command's pid, say)."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


def escape_command(pid_file: Path) -> str:
    """Leaves the group as a daemon does (`setsid`), and ends only once it has: the group
    kill at the command's end cannot catch it before it is out."""
    return (f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 300' & "
            f"while [ ! -s {pid_file} ]; do sleep 0.01; done")  # fmt: skip


def gone_or_killed(pid_file: Path) -> bool:
    """Whether the process of `pid_file` is gone (or never started) within 5 s; killed
    if not, so that a failing test leaves nothing running."""
    if not pid_file.exists():
        return True
    pid = int(pid_file.read_text())
    if wait_until_gone(pid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return False


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def as_ordinary_user() -> list[str]:
    """The argv prefix that runs a Python as an ordinary user (root reads every process):
    this user, or nobody when we are root. The script needs the standard library only, so
    any Python 3 that user may run will do (a virtualenv's may live under /root)."""
    if os.geteuid() != 0:
        return [sys.executable]
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot act as an ordinary user")
    drop = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    starts_itself = "import subprocess, sys; subprocess.run([sys.executable, '-c', ''], check=True)"
    for python in ("/usr/bin/python3", os.path.realpath(sys.executable)):
        probe = subprocess.run([*drop, python, "-c", starts_itself], capture_output=True)
        if probe.returncode == 0:
            return [*drop, python]
    pytest.skip("no Python that nobody may run")
