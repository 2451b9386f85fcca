"""Shared fixtures: a real Prefect server (SQLite in a temporary PREFECT_HOME) for the
session, and helpers to write pipeline configs into temporary repos."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_UI_URL,
    temporary_settings,
)

from flows._prefect import _free_port, wait_for_api

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `prefect server start` on a free port; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": "",
    }
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_api(api_url, 180, server)
        with temporary_settings(
            updates={
                PREFECT_API_URL: api_url,
                PREFECT_UI_URL: f"http://127.0.0.1:{port}",
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            }
        ):
            yield api_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.fixture
def cli_env(prefect_server: str) -> dict[str, str]:
    """Environment for `python -m flows.deploy` subprocesses that use the test server."""
    return {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(REPO)}


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


def wait_until_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while process_running(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
