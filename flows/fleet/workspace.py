"""Git workspaces for the fleet: one shared bare mirror per repository, one workspace per issue.

Layout under `root`:

    .mirror/<name>.git     bare `git clone --mirror` of the repository, shared by all workers
    .mirror/<name>.lock    flock: exclusive while the mirror is created or fetched,
                           shared while a workspace is made from it
    <worker>/issue-<N>/    a worker's workspace, on branch `ai-feature/issue-<N>`

Two git implementations, split by where the other repository is:

- Work on this disk runs in-process with libgit2 (pygit2): making a workspace from the
  mirror, branching, listing changes, committing, and pushing to a remote that is a local
  path or `file://` URL (test mode's stand-in for GitHub). No process per step (a git
  process costs a few ms of CPU, and an issue took eight of them), no hooks and no filter
  drivers (an agent can write the workspace's `.git/config`, and git would run what it
  names), no credentials involved.
- Talking to a network remote runs the git CLI: creating and fetching the mirror, pushing.
  It brings the user's ssh, proxy and CA setup, a credential helper scoped to the remote's
  host, and a timeout after which its whole process group is killed. No git process that
  holds the token runs in a workspace: the agent can write its `.git/config`, where an
  `insteadOf`, `core.sshCommand`, `receivepack` or `include` would hand the token to a
  program of its choosing. A push runs in a private, empty repository made for it, which
  borrows the workspace's objects (read as data) and pushes to the explicit URL.

Workspace strategy: a workspace borrows the mirror's objects (`objects/info/alternates`,
as `git clone --shared` does) and is given only the refs it needs (its branch, the default
branch, the tags and the remote-tracking refs of those branches), packed, with `origin` at
the real clone URL, so pushes go to the real remote. Making one writes a handful of files
whatever the mirror holds (a plain clone copies every loose object and writes a ref per
remote branch). The mirror never prunes objects (`gc.pruneExpire=never`, unreachable ones
kept in a cruft pack): a branch deleted upstream cannot take away objects a workspace
still reads. `origin/*` in a workspace is the remote as of the last `Mirror.ensure()`,
which callers run once per fleet run; a stale view cannot lose work because pushes are
leased (overwrite only what this workspace last saw).

Credentials: the token never appears in argv, in a URL or in any file. `GitAuth` adds an
inline credential helper (`-c credential.<scheme://host>.helper=...`, scoped to the
remote's host) that prints `$GIT_PASSWORD` from the child's environment, after clearing
every other configured helper (so none can store the token on disk).
`GIT_TERMINAL_PROMPT=0` makes a missing or wrong token fail instead of waiting for input.

Every git process runs as an argv list with an explicit cwd, a minimal explicit environment
and a timeout; on timeout its process group gets SIGTERM (git removes its lock files),
then SIGKILL. Failures of either kind raise `WorkspaceError` with git's message, credentials
scrubbed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pygit2
from pygit2 import Oid
from pygit2.enums import CheckoutStrategy, DiffOption, ReferenceType, RepositoryOpenFlag

from flows.commands import end_process_group
from flows.fleet.models import branch_name
from flows.locks import file_lock
from flows.removal import remove_tree

logger = logging.getLogger(__name__)

NETWORK_TIMEOUT = 600.0  # clone, fetch, push
LOCAL_TIMEOUT = 120.0  # everything that stays on disk
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
    on_behalf_of: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git <args>` in `cwd`; raise WorkspaceError on a timeout or an exit code not in
    `ok_codes`. `url` is the remote the call may contact (it scopes the credential helper).
    `on_behalf_of`: the folder errors name instead of `cwd` (a temporary one, say).
    """
    where = on_behalf_of or cwd
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
    with process:  # its pipes closed
        try:
            stdout, stderr = process.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            end_process_group(process)  # SIGTERM first: git cleans up its .lock files
            raise WorkspaceError(
                f"{operation} timed out after {timeout:g}s in {where} (process group killed)"
            ) from None
        except BaseException:  # interrupted: nothing it started outlives the wait
            end_process_group(process)
            raise
    result = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    if result.returncode not in ok_codes:
        raise _failure(operation, where, result, auth)
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
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(self.lock_path):
            if self.exists():
                self._keep_lent_objects()  # a mirror made before workspaces borrowed
                self._git(["fetch", "--prune", "--quiet", "origin"], cwd=self.path)
            else:
                self._clone()
                self._keep_lent_objects()

    def _keep_lent_objects(self) -> None:
        """Workspaces borrow the mirror's objects, so its garbage collection (`git gc
        --auto` after a fetch) must never prune one: a branch deleted or force-pushed
        upstream leaves objects unreachable here that a workspace may still use. They are
        kept in a cruft pack (not as loose files, which would pile up and set off a
        fruitless gc on every fetch). The gc runs in the background, git's default:
        repacking while workspaces read objects is safe (a reader that misses an object
        looks for new packs)."""
        config = pygit2.Config(os.fspath(self.path / "config"))
        for name, value in MIRROR_GC_CONFIG.items():
            if list(config.get_multivar(name)) != [value]:
                config[name] = value

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


SNAPSHOT_REF = "refs/fleet/snapshot"
# the mirror's gc: what workspaces borrow is never pruned (see Mirror._keep_lent_objects)
MIRROR_GC_CONFIG = {"gc.pruneExpire": "never", "gc.cruftPacks": "true"}
_SETTINGS = ("config", "info/exclude")  # in .git: what decides what is ignored, and more


@dataclass(frozen=True)
class Snapshot:
    """A workspace's state: its branch's commit, the tree of its working files and the
    content of its repository settings (None: the file did not exist)."""

    head: str
    tree: str
    settings: dict[str, bytes | None]


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _replace_file(path: Path, content: bytes | None) -> None:
    """Write `content` to a new file at `path` (None: no file), never through a symlink
    that stands there."""
    if path.is_symlink() or path.exists():
        path.unlink()
    if content is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def _empty_worktree(root: Path) -> None:
    """Delete everything in a working tree but `.git`, following no symlink."""
    for entry in os.scandir(root):
        if entry.name == ".git":
            continue
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
        else:
            os.unlink(entry.path)


@dataclass(frozen=True)
class Workspace:
    """A worker's workspace of the repository, checked out on the issue's branch.

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
        """Paths whose content in the worktree differs from `base`, and untracked paths
        (ignored ones left out): what `git diff <base>` and `git ls-files --others
        --exclude-standard` list together, whatever was staged or committed since."""
        with _repository(self.path, "listing changed files") as repo:
            tree = repo[self.base].peel(pygit2.Tree)
            diff = tree.diff_to_workdir(flags=_WITH_UNTRACKED)
            return sorted({p for d in diff.deltas for p in (d.old_file.path, d.new_file.path)})

    def snapshot(self) -> Snapshot:
        """The branch's commit, the working tree's content (ignored files left out) and the
        repository settings that judge it, to `restore` later. Stages everything, as
        `commit_all` would; the tree is kept under a ref of its own, so that no `git gc`
        in the workspace can prune it."""
        with _repository(self.path, "saving the working tree") as repo:
            index = repo.index
            index.add_all()
            index.write()
            tree = index.write_tree()
            head = repo.head.target
            signature = pygit2.Signature("prefect-fleet", "fleet@localhost")
            saved = repo.create_commit(None, signature, signature, "snapshot", tree, [head])
            repo.references.create(SNAPSHOT_REF, saved, force=True)
            settings = {name: _read_bytes(self.path / ".git" / name) for name in _SETTINGS}
            return Snapshot(head=str(head), tree=str(tree), settings=settings)

    def restore(self, snapshot: Snapshot) -> None:
        """Put the branch, the index, the working tree and the repository's settings back as
        they were at `snapshot`: whatever was written, deleted or committed since is gone
        and HEAD is on the issue's branch again. Every file is written anew from the tree,
        after all that is there is deleted (symlinks unfollowed, nested repositories and
        ignored files too: a retry rebuilds what it needs)."""
        for name, content in snapshot.settings.items():
            _replace_file(self.path / ".git" / name, content)
        with _repository(self.path, "restoring the working tree") as repo:
            tree = repo[snapshot.tree].peel(pygit2.Tree)
            _empty_worktree(self.path)
            branch = f"refs/heads/{self.branch}"
            repo.references.create(branch, snapshot.head, force=True)
            repo.set_head(branch)
            repo.index.read_tree(tree)
            repo.index.write()
            strategy = CheckoutStrategy.FORCE | CheckoutStrategy.RECREATE_MISSING
            repo.checkout_index(strategy=strategy)  # type: ignore[no-untyped-call]

    def commit_all(self, message: str, author_name: str, author_email: str) -> str | None:
        """Stage everything (`git add --all`) and commit as author and committer; the new
        sha, or None when there was nothing to commit. The message is cleaned up as
        `git commit --cleanup=whitespace` does (no line is dropped)."""
        text = _clean_message(message)
        with _repository(self.path, "git commit") as repo:
            index = repo.index
            index.add_all()
            index.write()
            tree = index.write_tree()
            parent = repo.head.peel(pygit2.Commit)
            if tree == parent.tree_id:
                return None
            if not text:
                raise WorkspaceError(f"git commit failed in {self.path}: empty commit message")
            signature = pygit2.Signature(author_name, author_email)
            return str(repo.create_commit("HEAD", signature, signature, text, tree, [parent.id]))

    def push(self) -> None:
        """Push the branch to the remote, leased: overwriting is allowed only if the remote
        branch is still where this workspace last saw it (absent if it never saw it).

        "Where we last saw it" is `refs/remotes/origin/<branch>`, which a successful push
        moves, so the lease follows our own pushes. A remote on this disk is pushed to
        in-process (`_push_in_process`); a network remote through `git push
        --force-with-lease=<ref>:<last seen>` from a private repository (see the module
        docstring), where `--no-force-if-includes` keeps a user's `push.useForceIfIncludes`
        from changing that rule.
        """
        if is_local_url(self.remote_url):
            self._push_in_process()
            return
        ref = f"refs/heads/{self.branch}"
        tracking = f"refs/remotes/origin/{self.branch}"
        with _repository(self.path, "git push") as repo:
            head = repo.references[ref].peel(pygit2.Commit).id
            seen = repo.references.get(tracking)
            expected = "" if seen is None else str(seen.peel(pygit2.Commit).id)  # "": absent
            objects = Path(repo.path, "objects").resolve()
        with tempfile.TemporaryDirectory(prefix="fleet-push-") as outbox:
            pygit2.init_repository(outbox, bare=True).free()
            Path(outbox, "objects", "info", "alternates").write_text(f"{objects}\n")
            lease = [f"--force-with-lease={ref}:{expected}", "--no-force-if-includes"]
            run_git(["push", "--quiet", "--no-verify", *lease, self.remote_url, f"{head}:{ref}"],
                    cwd=Path(outbox), auth=self.auth, url=self.remote_url,
                    timeout=self.timeout, on_behalf_of=self.path)  # fmt: skip
        with _repository(self.path, "git push") as repo:
            repo.references.create(tracking, head, force=True)

    def _push_in_process(self) -> None:
        """Push to a repository on this disk: write the objects it lacks, then move its
        branch in a ref transaction. The transaction holds the ref's lock while the lease
        is checked, so check and update are one step, as in receive-pack; and unlike a
        transport push, nothing lists the remote's other refs (a push stays as cheap when
        the remote has thousands of branches) or leaves a pack behind per push."""
        ref = f"refs/heads/{self.branch}"
        tracking = f"refs/remotes/origin/{self.branch}"
        with _repository(self.path, "git push") as repo, \
                _repository(_local_path(self.remote_url), "git push") as remote:  # fmt: skip
            head = repo.references[ref].peel(pygit2.Commit).id
            seen = repo.references.get(tracking)
            expected = None if seen is None else seen.peel(pygit2.Commit).id
            if not remote.is_bare and not remote.head_is_unborn and remote.head.name == ref:
                raise WorkspaceError(f"git push failed: {ref} is checked out in {remote.workdir}")
            _copy_missing_objects(repo, remote, head)
            with remote.transaction() as update:
                update.lock_ref(ref)
                current = remote.references.get(ref)
                found = None if current is None else current.target
                if found != expected:
                    raise WorkspaceError(
                        f"git push failed in {self.path}: {ref} rejected (stale info: this "
                        f"workspace last saw it {_short(expected)}, the remote has it "
                        f"{_short(found)})"
                    )
                update.set_target(ref, head, message=f"push from {self.path}")
            repo.references.create(tracking, head, force=True)

    def cleanup(self) -> None:
        """Delete the workspace directory (its commits live on only if pushed). Never
        raises: what cannot be deleted is logged."""
        try:
            remove_tree(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not delete the workspace %s: %s", self.path, exc)


_WITH_UNTRACKED = DiffOption.INCLUDE_UNTRACKED | DiffOption.RECURSE_UNTRACKED_DIRS
_GITLINK = 0o160000  # a submodule's commit in a tree: an object of another repository


def _copy_missing_objects(source: pygit2.Repository, target: pygit2.Repository, head: Oid) -> None:
    """Write into `target` every object reachable from `head` that it lacks: commits back
    to the first one it has, and within trees only the subtrees it lacks (a repository that
    has a tree has everything below it)."""
    pending, done = [head], set()
    while pending:
        oid = pending.pop()
        if oid in done or oid in target.odb:
            continue
        done.add(oid)
        obj = source[oid]
        if isinstance(obj, pygit2.Commit):
            pending += [obj.tree_id, *obj.parent_ids]
        elif isinstance(obj, pygit2.Tree):
            pending += [entry.id for entry in obj if entry.filemode != _GITLINK]
        elif isinstance(obj, pygit2.Tag):
            pending.append(obj.target)
        target.odb.write(obj.type, obj.read_raw())


def _short(oid: Oid | str | None) -> str:
    return "absent" if oid is None else str(oid)[:12]


def _local_path(url: str) -> Path:
    """The directory a local remote URL names (`file://` or a path)."""
    return Path(unquote(urlsplit(url).path)) if url.startswith("file://") else Path(url)


def is_local_url(url: str) -> bool:
    """Whether git reads `url` as a repository on this machine: a path or a `file://` URL,
    not `scheme://...` nor scp-like `host:path` (a colon before any slash)."""
    if "://" in url:
        return urlsplit(url).scheme == "file"
    colon, slash = url.find(":"), url.find("/")
    return colon == -1 or -1 < slash < colon


@contextmanager
def _repository(path: Path, operation: str) -> Iterator[pygit2.Repository]:
    """The repository at exactly `path` (never a parent's), with libgit2's errors turned
    into a WorkspaceError that names the operation and the path."""
    try:
        repo = pygit2.Repository(os.fspath(path), RepositoryOpenFlag.NO_SEARCH)
    except pygit2.GitError as exc:
        raise WorkspaceError(f"{operation} failed in {path}: {exc}") from None
    try:
        yield repo
    except (pygit2.GitError, KeyError, ValueError) as exc:
        raise WorkspaceError(f"{operation} failed in {path}: {exc}") from None
    finally:
        repo.free()


def _clean_message(message: str) -> str:
    """`git commit --cleanup=whitespace`: trailing spaces and leading and trailing blank
    lines removed, runs of blank lines made one; empty when nothing is left."""
    text = "\n".join(line.rstrip() for line in message.splitlines()).strip("\n")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text + "\n" if text else ""


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
    """A fresh workspace for one issue, on `ai-feature/issue-<N>`.

    If the branch exists on the remote (as of the last `mirror.ensure()`), the workspace
    continues from it; otherwise the branch starts at `origin/<default_branch>`. A directory
    left by an earlier run is replaced. Call `mirror.ensure()` first.

    The workspace borrows the mirror's objects, as `git clone --shared` does, and holds
    only the refs it needs (its branch, the default branch and `origin/<default_branch>`,
    `origin/<branch>` when resumed, and the tags): making one writes a handful of files,
    whatever the size of the mirror. (A plain clone copied every loose object and a ref
    per remote branch: on a slow disk, tens of milliseconds per issue, growing with the
    repository.)
    """
    path = workspace_path(root, worker, issue_number)
    branch = branch_name(issue_number)
    if not mirror.exists():
        raise WorkspaceError(f"no mirror at {mirror.path}: call Mirror.ensure() first")
    if path.exists() or path.is_symlink():
        remove_tree(path)  # refuses a symlink: never deletes outside the workspace
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(mirror.lock_path, shared=True):  # the refs cannot move until read
        with _repository(mirror.path, "reading the mirror's branches") as source:
            heads = _branch_heads(source, (default_branch, branch))
            default, remote = heads.get(default_branch), heads.get(branch)
            if default is None:
                raise WorkspaceError(
                    f"default branch {default_branch!r} not found in {mirror.path}"
                )
            if remote is None:
                base = default
            elif (common := source.merge_base(default, remote)) is None:
                raise WorkspaceError(f"{branch} shares no history with {default_branch}")
            else:
                base = str(common)
            refs = _tags(source)
        refs |= {f"refs/heads/{default_branch}": default,
                 f"refs/remotes/origin/{default_branch}": default,
                 f"refs/heads/{branch}": remote or default}  # fmt: skip
        if remote is not None:
            refs[f"refs/remotes/origin/{branch}"] = remote
        _write_git_dir(path / ".git", mirror, branch, refs, upstream=remote is not None)
        with _repository(path, "checking out the branch") as repo:
            repo.checkout_head(strategy=CheckoutStrategy.FORCE)  # type: ignore[no-untyped-call]
    return Workspace(
        path=path,
        branch=branch,
        base=base,
        remote_url=mirror.clone_url,
        resumed=remote is not None,
        auth=mirror.auth,
        timeout=mirror.timeout,
    )


def _branch_heads(mirror: pygit2.Repository, names: Sequence[str]) -> dict[str, str]:
    """The commits the mirror's branches `names` point to (absent names left out).
    Call with the mirror lock held."""
    heads: dict[str, str] = {}
    for name in names:
        try:
            ref = mirror.references.get(f"refs/heads/{name}")
        except ValueError:  # not a valid branch name: there is no such branch
            continue
        target = None if ref is None else mirror.get(ref.resolve().target)
        if isinstance(target, pygit2.Commit):
            heads[name] = str(target.id)
    return heads


def _tags(mirror: pygit2.Repository) -> dict[str, str]:
    """The mirror's tags (what `git describe` and version-from-git tools read)."""
    tags: dict[str, str] = {}
    for raw in mirror.raw_listall_references():
        if not raw.startswith(b"refs/tags/"):
            continue
        try:
            ref = mirror.references.get(raw.decode())
        except (UnicodeDecodeError, ValueError):  # a name git would not write: none
            continue
        if ref is not None and ref.type == ReferenceType.DIRECT:
            tags[ref.name] = str(ref.target)
    return tags


def _write_git_dir(
    git_dir: Path, mirror: Mirror, branch: str, refs: dict[str, str], upstream: bool
) -> None:
    """A repository (gitrepository-layout(5)) with HEAD on `branch`, `refs` packed (git
    peels tags itself: no peeled lines), the mirror's objects as its alternate, and
    `origin` at the real clone URL; with `upstream`, `branch` tracks `origin/<branch>`."""
    (git_dir / "objects" / "info").mkdir(parents=True)
    (git_dir / "refs").mkdir()
    (git_dir / "info").mkdir()  # where `info/exclude` goes
    objects = (mirror.path / "objects").absolute()
    (git_dir / "objects" / "info" / "alternates").write_text(f"{objects}\n")
    (git_dir / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    packed = "".join(f"{sha} {name}\n" for name, sha in sorted(refs.items()))
    (git_dir / "packed-refs").write_text(f"# pack-refs with: sorted \n{packed}")
    config = (
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
        f'[remote "origin"]\n\turl = {_config_value(mirror.clone_url)}\n'
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n"
    )
    if upstream:
        config += f'[branch "{branch}"]\n\tremote = origin\n\tmerge = refs/heads/{branch}\n'
    (git_dir / "config").write_text(config)


def _config_value(value: str) -> str:
    """`value` quoted for a git config file (git-config(1), "Syntax")."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _failure(
    operation: str, cwd: Path, result: subprocess.CompletedProcess[str], auth: GitAuth
) -> WorkspaceError:
    tail = auth.scrub(result.stderr.strip()[-STDERR_TAIL_CHARS:]) or "(no output)"
    return WorkspaceError(f"{operation} failed in {cwd} (exit {result.returncode}): {tail}")
