"""Test mode's stand-ins for GitHub: a local bare repository (branches, commits and pushes
are real git objects) and a file-backed tracker seeded with mock issues, generated or read
from a YAML file."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from flows.config import ConfigError, describe_validation_error, read_yaml
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.models import READY_LABEL, Issue
from flows.fleet.tracker import Labels
from flows.fleet.workspace import GitAuth, run_git

MAX_TITLE_CHARS = 256  # GitHub's limits
MAX_BODY_CHARS = 65_536

DEFAULT_BRANCH = "main"
CHECKS_CONFIG = """\
# The repository's checks: the fleet runs these after each agent attempt.
# (Shell builtins only: one process per check.)
name: checks
tasks:
  - name: changes-present
    priority: 1
    run: set -- changes/*.md; test -f "$1" || { echo "no changes/*.md file"; exit 1; }
  - name: changes-titled
    priority: 1
    run: >-
      for f in changes/*.md; do IFS= read -r title < "$f";
      case "$title" in "# "?*) ;; *) echo "$f: the first line is not a '# ' title"; exit 1;; esac;
      done
"""


def testbed_source(workspace: Path) -> str:
    """Names this testbed in run tags and idempotency keys (as OWNER/NAME does a repo)."""
    return "testbed-" + hashlib.sha1(str(workspace.resolve()).encode()).hexdigest()[:10]


def testbed_dir(workspace: Path) -> Path:
    return workspace / ".testbed"


def remote_path(workspace: Path) -> Path:
    """The bare repository standing in for the GitHub repo (its clone URL)."""
    return testbed_dir(workspace) / "remote.git"


def tracker_path(workspace: Path) -> Path:
    return testbed_dir(workspace) / "tracker.json"


def ensure_remote(workspace: Path) -> str:
    """Create the stand-in remote, or tidy it; returns its clone URL."""
    remote = remote_path(workspace)
    auth = GitAuth()
    if (remote / "HEAD").exists():
        # In-process pushes write loose objects; pack them once they pile up (as a host would).
        run_git(["gc", "--auto", "--quiet"], cwd=remote, auth=auth)
        return str(remote)
    remote.parent.mkdir(parents=True, exist_ok=True)
    run_git(["init", "--quiet", "--bare", f"--initial-branch={DEFAULT_BRANCH}", str(remote)],
            cwd=remote.parent, auth=auth)  # fmt: skip
    # as on a hosted remote, a push does not run `git gc --auto` (a process per push)
    run_git(["config", "receive.autogc", "false"], cwd=remote, auth=auth)
    with tempfile.TemporaryDirectory(prefix="testbed-") as tmp:
        seed = Path(tmp)
        (seed / "README.md").write_text("# Demo repository for the fleet's test mode\n")
        (seed / ".multi-agent.yml").write_text(CHECKS_CONFIG)
        run_git(["init", "--quiet", f"--initial-branch={DEFAULT_BRANCH}"], cwd=seed, auth=auth)
        run_git(["add", "-A"], cwd=seed, auth=auth)
        run_git(["-c", "user.name=fleet", "-c", "user.email=fleet@localhost", "commit",
                 "--quiet", "-m", "Initial commit"], cwd=seed, auth=auth)  # fmt: skip
        run_git(["push", "--quiet", str(remote), DEFAULT_BRANCH], cwd=seed, auth=auth)
    return str(remote)


class MockIssue(BaseModel):
    """An issue of a mock issues file; it is added with the ready label."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    body: str = Field(default="", max_length=MAX_BODY_CHARS)
    labels: list[Annotated[str, Field(min_length=1, max_length=50)]] = Field(
        default_factory=list, description="besides the ready label, e.g. priority:1"
    )


def load_mock_issues(path: Path) -> list[MockIssue]:
    """The issues of a YAML (or JSON) file: a list of {title, body, labels}. ConfigError
    naming the file and the entry's field (`[2].title`)."""
    data = read_yaml(path)
    if not isinstance(data, list):
        raise ConfigError(path, "", "expected a list of issues, each with a title (body, labels)")
    try:
        return TypeAdapter(list[MockIssue]).validate_python(data)
    except ValidationError as exc:
        field, problem = describe_validation_error(exc.errors()[0])
        raise ConfigError(path, field, problem) from None


_MOCK_AREAS = ("billing", "inventory", "users", "search", "reports")
_MOCK_TEMPLATES: tuple[tuple[str, str, str], ...] = (
    (
        "Add a /health endpoint to the {area} service",
        "Load balancers cannot tell whether the {area} service is up.\n\n"
        'Acceptance criteria:\n- `GET /health` answers 200 with `{{"status": "ok"}}`\n'
        "- a test covers it",
        "enhancement",
    ),
    (
        "Fix off-by-one in {area} pagination",
        "The last item of every page of `/{area}` is repeated as the first item of the next "
        "page.\n\nSteps: request `?page=1&per_page=10`, then `?page=2`; item 10 appears twice.",
        "bug",
    ),
    (
        "Validate input lengths in the {area} form",
        "Names longer than 255 characters reach the database and fail there with a 500.\n\n"
        "Reject them with a 422 and a message naming the field.",
        "bug",
    ),
    (
        "Document the {area} configuration options",
        "The README does not mention the `{area}` settings. Add a section listing each "
        "option, its default and an example.",
        "documentation",
    ),
    (
        "Add type hints to the {area} module",
        "`{area}.py` has no annotations, so mypy skips it. Annotate the public functions and "
        "make `mypy --strict` pass for the module.",
        "enhancement",
    ),
    (
        "Cache {area} lookups for 60 seconds",
        "Every request to `/{area}/<id>` queries the database. Cache results in memory for 60 "
        "seconds and invalidate an entry when it is updated.",
        "enhancement",
    ),
    (
        "Return 404 instead of 500 for unknown {area} ids",
        "`GET /{area}/999999` raises KeyError and answers 500. It should answer 404 with a "
        "JSON error body.",
        "bug",
    ),
    (
        "Log request durations in the {area} handler",
        "We cannot see slow {area} requests. Log method, path, status and duration in "
        "milliseconds for each request, one line each.",
        "enhancement",
    ),
)


def generate_mock_issues(n: int, ready_label: str = READY_LABEL) -> list[Issue]:
    """`n` varied, realistic issues numbered 1..n, all ready; most carry a `priority:1..3`."""
    issues = []
    for index in range(n):
        title, body, kind = _MOCK_TEMPLATES[index % len(_MOCK_TEMPLATES)]
        area = _MOCK_AREAS[index % len(_MOCK_AREAS)]
        labels = [ready_label, kind]
        if index % 4 != 3:
            labels.append(f"priority:{index % 3 + 1}")
        issues.append(
            Issue(
                number=index + 1,
                title=title.format(area=area),
                body=body.format(area=area),
                labels=tuple(labels),
            )
        )
    return issues


def ensure_tracker(
    workspace: Path, mock_issues: int, labels: Labels, from_file: Sequence[MockIssue] = ()
) -> LocalTracker:
    """The mock tracker; `mock_issues` new ready issues are added on every start, and each
    issue of `from_file` once (not when the tracker has an issue of that title already)."""
    path = tracker_path(workspace)
    try:
        tracker = LocalTracker.create(path, generate_mock_issues(mock_issues, labels.ready), labels)
    except FileExistsError:
        tracker = open_tracker(workspace, labels)
        for issue in generate_mock_issues(mock_issues, labels.ready):
            tracker.add_issue(issue.title, issue.body, issue.labels)
    if from_file:
        wanted = [(i.title, i.body, [labels.ready, *i.labels]) for i in from_file]
        tracker.add_missing_issues(wanted)
    return tracker


def open_tracker(workspace: Path, labels: Labels) -> LocalTracker:
    """The mock tracker as it is (`ensure_tracker` creates it)."""
    return LocalTracker(tracker_path(workspace), labels)
