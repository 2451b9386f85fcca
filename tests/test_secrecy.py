"""An undumpable process: the commands it starts cannot read its environment in /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows._prefect import local_server
from flows.secrecy import without_secrets
from tests.conftest import as_ordinary_user

PROJECT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-token-value"
# The parent (with the secret in its environment) starts a command, which tries to read the
# parent's /proc/<pid>/environ and prints how often the secret shows up there.
PARENT = """
import os, subprocess, sys
if sys.argv[1] == "undumpable":
    from flows.secrecy import make_undumpable
    assert make_undumpable()
reader = "import os, sys; print(open(f'/proc/{os.getppid()}/environ', 'rb').read()"
reader += ".count(sys.argv[1].encode()))"
secret = os.environ["FLEET_TEST_TOKEN"]
result = subprocess.run([sys.executable, "-c", reader, secret], capture_output=True, text=True)
print(result.stdout.strip() or result.stderr.strip().splitlines()[-1])
"""


def run_parent(mode: str) -> str:
    env = {"PATH": os.defpath, "PYTHONPATH": str(PROJECT), "FLEET_TEST_TOKEN": SECRET}
    result = subprocess.run(
        [*as_ordinary_user(), "-c", PARENT, mode],
        capture_output=True, text=True, env=env, cwd="/", timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_commands_cannot_read_the_environment_of_an_undumpable_parent() -> None:
    assert run_parent("dumpable") == "1"  # the hole: an ordinary process's env is readable
    assert "Permission denied" in run_parent("undumpable")


def test_secret_variables_are_left_out_but_a_programs_own_settings() -> None:
    environ = {"PATH": "/bin", "GITHUB_TOKEN": SECRET, "ANTHROPIC_API_KEY": SECRET,
               "MY_PASSWORD": SECRET, "PREFECT_API_KEY": "pnu_x", "PREFECT_HOME": "/h"}  # fmt: skip
    assert without_secrets(environ) == {"PATH": "/bin", "PREFECT_HOME": "/h"}
    kept = without_secrets(environ, keep_prefix="PREFECT_")
    assert kept == {"PATH": "/bin", "PREFECT_API_KEY": "pnu_x", "PREFECT_HOME": "/h"}


def test_the_local_prefect_server_gets_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server the CLI starts is an ordinary process: an agent's command could read its
    environment, so the fleet's tokens are not in it."""
    monkeypatch.setenv("GITHUB_TOKEN", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    with local_server(home=tmp_path / "home"):
        servers = [child for child in psutil.Process().children(recursive=True)
                   if "server" in child.cmdline()]  # fmt: skip
        assert servers
        environs = [Path(f"/proc/{server.pid}/environ").read_bytes() for server in servers]
    assert all(b"PREFECT_HOME=" in environ for environ in environs)  # it is readable
    assert not any(SECRET.encode() in environ for environ in environs)
