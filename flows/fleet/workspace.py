"""Git workspaces for the fleet: one shared bare mirror per repository, one clone per issue.

Layout under `root`:

    .mirror/<name>.git     bare `git clone --mirror` of the repository, shared by all workers
    .mirror/<name>.lock    flock: exclusive while the mirror is created or fetched,
                           shared while a workspace is cloned from it
    <worker>/issue-<N>/    a worker's clone, on branch `ai-feature/issue-<N>`

Clone strategy: a workspace is a plain local clone of the mirror (hardlinked objects, no
network, no credentials), after which `origin` is pointed at the real clone URL, so pushes
go to the real remote. `git clone --reference` was not used: it links the workspace to the
mirror's object store through alternates, and a later `fetch --prune` plus auto-gc in the
mirror can delete objects a live workspace still needs. `origin/*` in a workspace is
therefore the remote as of the last `Mirror.ensure()`, which callers run once per fleet
run; a stale view cannot lose work because pushes use an explicit `--force-with-lease`.

Credentials: the token never appears in argv, in a URL or in any file. `GitAuth` adds an
inline credential helper (`-c credential.<scheme://host>.helper=...`, scoped to the
remote's host) that prints `$GIT_PASSWORD` from the child's environment, after clearing
every other configured helper (so none can store the token on disk).
`GIT_TERMINAL_PROMPT=0` makes a missing or wrong token fail instead of waiting for input.

Every git call runs as an argv list with an explicit cwd, a minimal explicit environment
and a timeout; on timeout its process group gets SIGTERM (git removes its lock files),
then SIGKILL. Failures raise `WorkspaceError` with git's stderr tail, credentials scrubbed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from flows.fleet.models import branch_name

NETWORK_TIMEOUT = 600.0  # clone, fetch, push
LOCAL_TIMEOUT = 120.0  # everything that stays on disk
KILL_GRACE_SECONDS = 3.0
STDERR_TAIL_CHARS = 2000
GIT_USERNAME = "x-access-token"  # what GitHub expects with an installation token or PAT

# Variables copied from our environment when set: where programs are, whose home (ssh
# keys, global git config), and how to reach the network (proxies, CA bundles).
PASSTHROUGH_ENV = (
    "PATH",
    "HOME",
    "SSH_AUTH_SOCK",
    "GIT_SSL_CAINFO",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
)
# Applied to every call: no hooks and no fsmonitor, which would run programs named in the
# workspace's own .git/config (writable by the agent).
SAFE_CONFIG = ("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false")
# `git` appends the action (get/store/erase); only `get` answers, from the environment.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get && '
    'printf \'username=%s\\npassword=%s\\n\' "$GIT_USERNAME" "$GIT_PASSWORD"; }; f'
)
# `[<branch> <sha>] <subject>`, `[<branch> (root-commit) <sha>] ...`, `[detached HEAD <sha>]
# ...`: branch names hold no space, so the first " <hex>]" is the sha.
_COMMIT_SUMMARY = re.compile(r"\[[^\n]*? ([0-9a-f]{40}|[0-9a-f]{64})\] ")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
_WORKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class WorkspaceError(RuntimeError):
    """A git operation failed or timed out; the message is safe to log."""


@dataclass(frozen=True)
class GitAuth:
    """Credentials for https remotes, handed to git through the environment only."""

    token: str | None = field(default=None, repr=False)
    username: str = GIT_USERNAME

    def env(self) -> dict[str, str]:
        """The whole environment for a git child: passthrough variables plus our GIT_*."""
        env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(LANG="C", LC_ALL="C", GIT_TERMINAL_PROMPT="0")
        if self.token:
            env.update(GIT_USERNAME=self.username, GIT_PASSWORD=self.token)
        return env

    def config_args(self, url: str) -> list[str]:
        """`-c` options: no inherited credential helper; ours for the remote's host only."""
        args = ["-c", "credential.helper="]
        parts = urlsplit(url)
        if self.token and parts.scheme in ("http", "https") and parts.hostname:
            host = parts.netloc.rpartition("@")[2]
            args += ["-c", f"credential.{parts.scheme}://{host}.helper={CREDENTIAL_HELPER}"]
        return args

    def scrub(self, text: str) -> str:
        """Remove URL userinfo and the token itself from text meant for logs or errors."""
        text = _USERINFO.sub(r"\1***@", text)
        return text.replace(self.token, "***") if self.token else text


def run_git(
    args: Sequence[str],
    *,
    cwd: Path,
    auth: GitAuth,
    url: str = "",
    timeout: float = LOCAL_TIMEOUT,
    stdin: str | None = None,
    ok_codes: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[str]:
    """Run `git <args>` in `cwd`; raise WorkspaceError on a timeout or an exit code not in
    `ok_codes`. `url` is the remote the call may contact (it scopes the credential helper).
    """
    argv = ["git", *SAFE_CONFIG, *auth.config_args(url), *args]
    operation = f"git {_subcommand(args)}"
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=auth.env(),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            start_new_session=True,
        )
    except OSError as exc:
        raise WorkspaceError(f"{operation}: cannot start git: {exc.strerror or exc}") from None
    try:
        stdout, stderr = process.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(process)
        raise WorkspaceError(
            f"{operation} timed out after {timeout:g}s in {cwd} (process group killed)"
        ) from None
    result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    if result.returncode not in ok_codes:
        raise _failure(operation, cwd, result, auth)
    return result


def _subcommand(args: Sequence[str]) -> str:
    """The git subcommand in `args`, skipping leading options and `-c` values."""
    words = iter(args)
    for word in words:
        if word == "-c":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the group (git cleans up its .lock files), SIGKILL it after a grace period."""
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.communicate(timeout=KILL_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.communicate()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@contextmanager
def _flock(path: Path, operation: int) -> Iterator[None]:
    """Hold `fcntl.flock(operation)` on `path`; each call opens its own file description,
    so the lock also separates threads of one process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, operation)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mirror_name(clone_url: str) -> str:
    """`owner-repo-<hash>`: readable, filesystem-safe, distinct for distinct URLs."""
    tail = "-".join(clone_url.rstrip("/").removesuffix(".git").split("/")[-2:])
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")[:80] or "repo"
    return f"{safe}-{hashlib.sha256(clone_url.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class Mirror:
    """The shared bare mirror of `clone_url` under `<root>/.mirror/`."""

    root: Path
    clone_url: str
    auth: GitAuth = field(default_factory=GitAuth)
    timeout: float = NETWORK_TIMEOUT

    def __post_init__(self) -> None:
        url = self.clone_url
        if not url or url.startswith("-") or any(c.isspace() for c in url):
            raise ValueError(f"invalid clone URL: {self.auth.scrub(url)!r}")
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and (parts.username or parts.password):
            raise ValueError("the clone URL must not carry credentials; pass them in GitAuth")

    @property
    def path(self) -> Path:
        return self.root / ".mirror" / f"{mirror_name(self.clone_url)}.git"

    @property
    def lock_path(self) -> Path:
        return self.path.with_suffix(".lock")

    def exists(self) -> bool:
        return (self.path / "HEAD").is_file()

    def ensure(self) -> None:
        """Create the mirror, or fetch into it (pruning deleted refs), under the lock."""
        with _flock(self.lock_path, fcntl.LOCK_EX):
            if self.exists():
                self._git(["fetch", "--prune", "--quiet", "origin"], cwd=self.path)
            else:
                self._clone()

    def _clone(self) -> None:
        """Clone next to the final path and rename, so a killed clone never looks done."""
        partial = self.path.with_name(self.path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            self._git(["clone", "--mirror", "--quiet", "--", self.clone_url, str(partial)],
                      cwd=self.root)  # fmt: skip
            partial.rename(self.path)
        finally:
            shutil.rmtree(partial, ignore_errors=True)

    def _git(self, args: list[str], cwd: Path) -> None:
        run_git(args, cwd=cwd, auth=self.auth, url=self.clone_url, timeout=self.timeout)


@dataclass(frozen=True)
class Workspace:
    """A worker's clone of the repository, checked out on the issue's branch.

    `base` is the commit the branch started from (the default branch, or its merge base
    with a resumed branch); `resumed` is True when the branch came from the remote.
    """

    path: Path
    branch: str
    base: str
    remote_url: str = ""
    resumed: bool = False
    auth: GitAuth = field(default_factory=GitAuth, repr=False)
    timeout: float = NETWORK_TIMEOUT

    def changed_files(self) -> list[str]:
        """Paths that differ from `base`: committed, staged, unstaged and untracked.

        One `git status` answers while HEAD is still at `base` (the usual case: nothing
        committed yet on a fresh branch); otherwise, or when an entry's worktree-vs-HEAD
        state is ambiguous, `git diff <base>` adds the tracked side (two calls).
        """
        status = self._git(["status", "--porcelain=v2", "-z", "--branch", "--no-ahead-behind",
                            "--untracked-files=all", "--no-renames"])  # fmt: skip
        head, tracked, untracked = _parse_status(status)
        if head is None or head != self.base or tracked is None:
            diff = self._git(["diff", "--name-only", "--no-renames", "-z", self.base, "--"])
            tracked = {name for name in diff.split("\0") if name}
        return sorted(tracked | untracked)

    def commit_all(self, message: str, author_name: str, author_email: str) -> str | None:
        """Stage everything and commit as author and committer; the new sha, or None when
        there was nothing to commit. The message goes through stdin, never through argv.

        Two calls: `add` and `commit`, whose summary line carries the full sha
        (`core.abbrev=no`, git >= 2.31) and which spawns no `git maintenance` (pointless
        in a workspace that lives minutes). Only when `commit` exits 1 does
        `diff --cached` tell "nothing to commit" (None) from a real failure (raised).
        """
        self._git(["add", "--all", "--", "."])
        identity = ["-c", f"user.name={author_name}", "-c", f"user.email={author_email}"]
        quiet = ["-c", "core.abbrev=no", "-c", "maintenance.auto=false"]
        args = [*identity, *quiet, "commit", "--no-verify", "--file=-"]
        result = run_git(args, cwd=self.path, auth=self.auth, stdin=message, ok_codes=(0, 1))
        if result.returncode == 1:
            staged = run_git(["diff", "--cached", "--quiet"], cwd=self.path, auth=self.auth,
                             ok_codes=(0, 1))  # fmt: skip
            if staged.returncode == 0:
                return None
            raise _failure("git commit", self.path, result, self.auth)
        summary = _COMMIT_SUMMARY.match(result.stdout)
        if summary:
            return summary.group(1)
        return self._git(["rev-parse", "--verify", "HEAD^{commit}"]).strip()

    def push(self, force_with_lease: bool = True) -> None:
        """Push the branch to origin. With `force_with_lease`, overwriting is allowed only
        if the remote branch is still where we last saw it (absent if we never saw it).

        "Where we last saw it" is `refs/remotes/origin/<branch>`, which git reads itself
        (`--force-with-lease=<ref>` without a value; no tracking ref means the remote
        branch must not exist) and moves on a successful push, so the lease follows our
        own pushes. `--no-force-if-includes` keeps a user's `push.useForceIfIncludes`
        from changing that rule.
        """
        ref = f"refs/heads/{self.branch}"
        args = ["push", "--quiet", "--no-verify"]
        if force_with_lease:
            args += [f"--force-with-lease={ref}", "--no-force-if-includes"]
        self._git([*args, "origin", f"{ref}:{ref}"], network=True)

    def cleanup(self) -> None:
        """Delete the workspace directory (its commits live on only if pushed)."""
        shutil.rmtree(self.path, ignore_errors=True)

    def _git(self, args: list[str], stdin: str | None = None, network: bool = False) -> str:
        result = run_git(
            args,
            cwd=self.path,
            auth=self.auth,
            url=self.remote_url if network else "",
            timeout=self.timeout if network else LOCAL_TIMEOUT,
            stdin=stdin,
        )
        return result.stdout


def workspace_path(root: Path, worker: str, issue_number: int) -> Path:
    """`<root>/<worker>/issue-<N>`, from a validated worker name and the issue number."""
    if not _WORKER.fullmatch(worker):
        raise ValueError(f"invalid worker name: {worker!r}")
    if isinstance(issue_number, bool) or not isinstance(issue_number, int) or issue_number < 1:
        raise ValueError(f"invalid issue number: {issue_number!r}")
    return root / worker / f"issue-{issue_number}"


def prepare_workspace(
    mirror: Mirror, root: Path, worker: str, issue_number: int, default_branch: str
) -> Workspace:
    """A fresh clone for one issue, on `ai-feature/issue-<N>`.

    If the branch exists on the remote (as of the last `mirror.ensure()`), the workspace
    continues from it; otherwise the branch starts at `origin/<default_branch>`. A directory
    left by an earlier run is replaced. Call `mirror.ensure()` first.

    Four git calls for a new branch (`for-each-ref` in the mirror, `clone --no-checkout`,
    `remote set-url`, `checkout -B`), five for a resumed one (`clone --branch` checks the
    branch out with tracking; `merge-base` finds `base`). `--template=`: no sample hooks and
    other template files to write (hooks never run here anyway).
    """
    path = workspace_path(root, worker, issue_number)
    branch = branch_name(issue_number)
    if not mirror.exists():
        raise WorkspaceError(f"no mirror at {mirror.path}: call Mirror.ensure() first")
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)  # refuses a symlink: never deletes outside the workspace
    path.parent.mkdir(parents=True, exist_ok=True)
    auth = mirror.auth
    with _flock(mirror.lock_path, fcntl.LOCK_SH):  # the refs cannot move until cloned
        heads = _branch_heads(mirror, (default_branch, branch))
        default, remote = heads.get(default_branch), heads.get(branch)
        if default is None:
            raise WorkspaceError(f"default branch {default_branch!r} not found in {mirror.path}")
        how = ["--no-checkout"] if remote is None else ["--branch", branch]
        run_git(["clone", "--quiet", "--template=", *how, "--", str(mirror.path), str(path)],
                cwd=path.parent, auth=auth)  # fmt: skip
    run_git(["remote", "set-url", "origin", mirror.clone_url], cwd=path, auth=auth)
    if remote is None:
        base = default
        run_git(["checkout", "--quiet", "--no-track", "-B", branch, default, "--"],
                cwd=path, auth=auth)  # fmt: skip
    else:
        base = run_git(["merge-base", default, remote], cwd=path, auth=auth).stdout.strip()
    return Workspace(
        path=path,
        branch=branch,
        base=base,
        remote_url=mirror.clone_url,
        resumed=remote is not None,
        auth=auth,
        timeout=mirror.timeout,
    )


def _branch_heads(mirror: Mirror, names: Sequence[str]) -> dict[str, str]:
    """The commits the mirror's branches `names` point to (absent names left out), in
    one `for-each-ref` call. Call with the mirror lock held."""
    refs = {f"refs/heads/{name}": name for name in names}
    out = run_git(["for-each-ref", "--format=%(objecttype) %(objectname) %(refname)", *refs],
                  cwd=mirror.path, auth=mirror.auth).stdout  # fmt: skip
    heads: dict[str, str] = {}
    for line in out.splitlines():
        kind, sha, ref = line.split(" ", 2)
        if kind == "commit" and ref in refs:  # a pattern also matches refs below it
            heads[refs[ref]] = sha
    return heads


def _parse_status(text: str) -> tuple[str | None, set[str] | None, set[str]]:
    """From `git status --porcelain=v2 -z --branch`: HEAD's sha, the tracked paths whose
    worktree differs from HEAD (None when that cannot be told from the status alone: an
    entry changed in both index and worktree, a conflict, a rename), untracked paths."""
    head: str | None = None
    tracked: set[str] | None = set()
    untracked: set[str] = set()
    entries = iter(text.split("\0"))
    for entry in entries:
        if entry.startswith("# branch.oid "):
            oid = entry.removeprefix("# branch.oid ")
            head = oid if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", oid) else None
        elif entry.startswith("? "):
            untracked.add(entry[2:])
        elif entry.startswith("1 ") and tracked is not None:
            fields = entry.split(" ", 8)
            # X is index vs HEAD, Y worktree vs index: with one of them ".", the worktree
            # differs from HEAD; with both changed it may be back to HEAD's content.
            if len(fields) == 9 and "." in fields[1]:
                tracked.add(fields[8])
            else:
                tracked = None
        elif entry.startswith("2 "):
            next(entries, None)  # the rename's original path
            tracked = None
        elif entry.startswith("u "):
            tracked = None
    return head, tracked, untracked


def _failure(
    operation: str, cwd: Path, result: subprocess.CompletedProcess[str], auth: GitAuth
) -> WorkspaceError:
    tail = auth.scrub(result.stderr.strip()[-STDERR_TAIL_CHARS:]) or "(no output)"
    return WorkspaceError(f"{operation} failed in {cwd} (exit {result.returncode}): {tail}")
