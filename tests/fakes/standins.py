"""Local mode without GitHub or Anthropic: the loopback stand-ins the tests use, serving a
demo repository with ready issues and an agent that resolves them, for the real clients.

    .venv/bin/python -m tests.fakes.standins            # serve; prints what to run
    .venv/bin/python -m tests.fakes.standins --run      # serve, run the fleet once, stop

The GitHub stand-in serves `demo/widgets` (its clone URL a bare repository on this disk,
with the checks config the test mode uses), with the fleet's labels and three ready
issues. The Anthropic stand-in answers every conversation with two turns: a `write_file`
of `changes/issue-N.md`, then a summary. Tokens are made up for the run; nothing leaves
this machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flows.fleet.testbed import ensure_remote
from tests.fakes.anthropic_api import AssistantTurn, FakeAnthropic, text_turn, tool_turn
from tests.fakes.github_api import FakeGitHub

OWNER, REPO = "demo", "widgets"
LABELS = ("ready-for-dev", "in-progress", "ai-review", "ai-failed")
ISSUES = (
    ("Add a rate limiter to the API", "Requests from one client should be limited.", "1"),
    ("Document the configuration file", "", "2"),
    ("Fix the typo in the README", "It says 'recieve'.", "3"),
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def demo_agent(body: dict[str, Any]) -> AssistantTurn:
    """The next turn of any conversation: write the issue's change note, then finish."""
    messages = body["messages"]
    first = messages[0]["content"]
    prompt = first if isinstance(first, str) else " ".join(b.get("text", "") for b in first)
    found = re.search(r"issue #(\d+): (.*)", prompt)
    number, title = (found.group(1), found.group(2)) if found else ("0", "the issue")
    if len(messages) == 1:  # the task: write the note
        note = {"path": f"changes/issue-{number}.md", "content": f"# {title}\n\nDone.\n"}
        return tool_turn("write_file", note, block_id=f"toolu_demo_{number}_{len(messages)}")
    return text_turn(f"Added changes/issue-{number}.md for: {title}")


def seeded_github(remote: Path, token: str) -> FakeGitHub:
    github = FakeGitHub(token=token, owner=OWNER, repo=REPO, clone_url=str(remote))
    for label in LABELS:
        github.add_label(label)
    for title, body, priority in ISSUES:
        github.add_issue(title, body, ["ready-for-dev", f"priority:{priority}"])
    return github


def fleet_env(github: FakeGitHub, claude: FakeAnthropic, token: str, key: str) -> dict[str, str]:
    return {"GITHUB_API_URL": github.base_url, "GITHUB_TOKEN": token,
            "ANTHROPIC_BASE_URL": claude.base_url, "ANTHROPIC_API_KEY": key}  # fmt: skip


def fleet_command(workspace: Path, workers: int) -> list[str]:
    repository = f"{OWNER}/{REPO}"
    return [sys.executable, "-m", "flows.deploy", "fleet", "--mode", "local", "--repo",
            repository, "--workers", str(workers), "--workspace", str(workspace)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--run", action="store_true", help="run the fleet once, then stop")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="folder for the remote and the workspace")
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="fleet-standins-"))
    token, key = f"ghp_demo{os.getpid()}", f"sk-ant-demo{os.getpid()}"
    remote = Path(ensure_remote(folder / "origin"))  # a bare repository with the checks
    workspace = folder / "workspace"
    with seeded_github(remote, token) as github, \
            FakeAnthropic(api_key=key, responder=demo_agent) as claude:  # fmt: skip
        env = fleet_env(github, claude, token, key)
        command = fleet_command(workspace, args.workers)
        if args.run:
            code = subprocess.run(command, env={**os.environ, **env}, cwd=REPO_ROOT).returncode
            print(f"\npull requests on the stand-in: {[p['html_url'] for p in github.pulls]}")
            return code
        print("GitHub and Anthropic stand-ins are serving. In another terminal:\n")
        print("".join(f"export {name}={value}\n" for name, value in env.items()))
        print(" ".join([".venv/bin/python", *command[1:]]))
        print("\nCtrl-C here stops them.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
