"""An undumpable process: the commands it starts cannot read its environment in /proc."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from flows._prefect import local_server
from flows.secrecy import without_secrets

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
