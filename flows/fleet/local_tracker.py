"""Test mode's stand-in for GitHub's issues and pull requests: `LocalTracker` keeps the
tracker's state in JSON files, so the fleet claims, finishes and merges offline through the
same `Tracker` protocol as on GitHub. Several processes (several fleets) may share one store:
each change locks only the record it changes, and files are replaced atomically, so readers
take no lock (the layout is in LocalTracker's docstring).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, Field

from flows.fleet.models import Issue, PullRequest
from flows.fleet.tracker import (
    CLAIM_GRACE_S,
    CLAIM_PREFIX,
    Labels,
    Review,
    ReviewPull,
    TrackerError,
    closing_references,
    issue_of_branch,
    last_claim_in,
)
from flows.locks import file_lock


class LocalPull(BaseModel):
    """A pull request in the local store."""

    number: int
    branch: str
    title: str
    body: str
    url: str
    state: Literal["open", "closed", "merged"] = "open"
    mergeable: bool = True
    reviews: list[Review] = Field(default_factory=list)


class _LocalIssue(BaseModel):
    number: int
    title: str
    body: str = ""
    state: Literal["open", "closed"] = "open"
    labels: list[str] = Field(default_factory=list)
    comments: list[str] = Field(default_factory=list)

    def to_issue(self) -> Issue:
        return Issue(
            number=self.number,
            title=self.title,
            body=self.body,
            labels=tuple(self.labels),
            url=f"local://issues/{self.number}",
        )


class _NoIssue(TrackerError):
    """The store has no issue with that number."""


_FORMAT = "local-tracker/2"
_M = TypeVar("_M", bound=BaseModel)


class LocalTracker:
    """The tracker in JSON files, for test mode (no network).

    `path` (e.g. `tracker.json`) names the store; the data lives next to it, one file per
    record, so no operation reads or rewrites more than the records it touches:

        <path>                      manifest {"format": ..., "data": "<name>.d"}
        <path>.d/next               the next number; issues and pull requests share one sequence
                                    (the file is also its own flock)
        <path>.d/issues/<N>.json    one issue: title, body, labels, comments
        <path>.d/pulls/<key>.json   one pull request, keyed by its branch (percent-quoted)
        <path>.d/locks/             flock files: `issue-<N>`, `pull-<key>`
        <path>.lock                 taken by create() only

    Each read-modify-write holds the flock of just the record it changes (the `next` file for
    a new number), so several processes (several fleets) can share one store and work on
    different issues never waits on a common lock. Files are replaced atomically, so readers
    take no lock and never see half a write.
    """

    def __init__(self, path: Path, labels: Labels) -> None:
        self._path = Path(path)
        self._labels = labels
        self._data = self._path.with_name(self._path.name + ".d")
        self._checked = False

    def __repr__(self) -> str:
        return f"LocalTracker({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def labels(self) -> Labels:
        return self._labels

    @classmethod
    def create(cls, path: Path, issues: Iterable[Issue], labels: Labels) -> LocalTracker:
        """Seed a new store with `issues` (their numbers kept); FileExistsError if one exists."""
        tracker = cls(path, labels)
        tracker._path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(tracker._create_lock):
            if tracker._path.exists() or tracker._data.exists():
                raise FileExistsError(f"a tracker store already exists at {tracker._path}")
            records: dict[int, _LocalIssue] = {}
            for issue in issues:
                if issue.number in records:
                    raise ValueError(f"issue #{issue.number} is given twice")
                records[issue.number] = _LocalIssue(
                    number=issue.number,
                    title=issue.title,
                    body=issue.body,
                    labels=list(issue.labels),
                )
            next_number = max([1, *(number + 1 for number in records)])
            tracker._build(records.values(), [], next_number)
        tracker._checked = True
        return tracker

    def add_issue(self, title: str, body: str = "", labels: Iterable[str] | None = None) -> Issue:
        """Add an issue (labels None: just the ready label) and return it."""
        names = [self._labels.ready] if labels is None else list(labels)
        record = _LocalIssue(number=self._take_number(), title=title, body=body, labels=names)
        _write_model(self._issue_file(record.number), record)  # a fresh number: nobody else
        return record.to_issue()

    def add_missing_issues(self, issues: Iterable[tuple[str, str, list[str]]]) -> list[Issue]:
        """Add each (title, body, labels) unless an issue of that title exists; the added.
        One lock for the whole check, so two fleets seeding at once add each issue once."""
        with file_lock(self._lock_file("seed")):
            titles = {issue.title for issue in self.issues()}
            added = []
            for title, body, labels in issues:
                if title not in titles:
                    added.append(self.add_issue(title, body, labels))
                    titles.add(title)
            return added

    # ----- Tracker -----

    def list_ready(self) -> list[Issue]:
        return [
            i.to_issue()
            for i in self._all_issues()
            if i.state == "open" and self._labels.ready in i.labels
        ]

    def get(self, number: int) -> Issue:
        return self._read_issue(number).to_issue()

    def claim(self, issue: Issue, claimant: str) -> bool:
        ready = self._labels.ready

        def take(record: _LocalIssue) -> bool:
            if ready not in record.labels:
                return False
            _drop(record.labels, ready)
            _add(record.labels, self._labels.in_progress)
            record.comments.append(f"{CLAIM_PREFIX}{claimant}")
            return True

        try:
            # Without the lock first: an issue someone already took costs one read.
            if ready not in self._read_issue(issue.number).labels:
                return False
            return self._change(issue.number, take)
        except _NoIssue:
            return False

    def release(self, issue: Issue, reason: str) -> None:
        def back(record: _LocalIssue) -> bool:
            _drop(record.labels, self._labels.in_progress)
            _add(record.labels, self._labels.ready)
            record.comments.append(f"Released: {reason}")
            return True

        self._change(issue.number, back)

    def last_claim(self, number: int) -> str | None:
        return last_claim_in(self._read_issue(number).comments)

    def interrupted_claims(self, older_than_s: float = CLAIM_GRACE_S) -> list[Issue]:
        return []  # a local claim is one change under a lock: it happens whole or not at all

    def open_pull_request(self, issue: Issue, branch: str, title: str, body: str) -> PullRequest:
        key = _branch_key(branch)
        file = self._store() / "pulls" / f"{key}.json"
        with file_lock(self._lock_file(f"pull-{key}")):  # one creator per branch
            pull = _read_model(LocalPull, file) if file.exists() else None
            if pull is not None and pull.state != "open":
                pull = None  # as on GitHub, a merged or closed one is not reopened: a new one
            created = pull is None
            if pull is None:
                number = self._take_number()
                pull = LocalPull(
                    number=number,
                    branch=branch,
                    title=title,
                    body=body,
                    url=f"local://pulls/{number}",
                )
            pull.title, pull.body = title, body
            _write_model(file, pull)
        return PullRequest(number=pull.number, url=pull.url, branch=branch, created=created)

    def finish(self, issue: Issue, ok: bool, comment: str) -> None:
        def done(record: _LocalIssue) -> bool:
            _add(record.labels, self._labels.review if ok else self._labels.failed)
            _drop(record.labels, self._labels.in_progress)
            if not ok:
                _drop(record.labels, self._labels.review)
            if comment:
                record.comments.append(comment)
            return True

        self._change(issue.number, done)

    def review_pulls(self) -> list[ReviewPull]:
        found = []
        for pull in self.pulls():
            issue = issue_of_branch(pull.branch)
            if pull.state != "open" or issue is None:
                continue
            try:
                record = self._read_issue(issue)
            except _NoIssue:
                continue
            if record.state == "open" and self._labels.review in record.labels:
                found.append(
                    ReviewPull(
                        number=pull.number,
                        url=pull.url,
                        branch=pull.branch,
                        issue=issue,
                        reviews=tuple(pull.reviews),
                    )
                )
        return found

    def merge(self, pull: ReviewPull) -> None:
        """Mark the pull request merged and close the issues its body closes, as GitHub does
        (the test-mode remote's branches are not merged: the store only records it)."""
        action = f"merge pull request #{pull.number}"

        def merged(record: LocalPull) -> None:
            if record.number != pull.number or record.state != "open":
                raise TrackerError(f"{action}: it is not open")
            if not record.mergeable:
                raise TrackerError(f"{action}: not mergeable (conflicts with the base branch)")
            record.state = "merged"

        record = self._change_pull(pull.branch, merged)

        def close(issue: _LocalIssue) -> bool:
            if issue.state == "closed":
                return False
            issue.state = "closed"
            issue.comments.append(f"Closed by pull request #{pull.number} ({pull.url})")
            return True

        for number in closing_references(record.body):
            with suppress(_NoIssue):
                self._change(number, close)

    # ----- test controls -----

    def add_review(self, pull_number: int, reviewer: str, state: str = "APPROVED") -> None:
        """Record a review (APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED) of a pull."""

        def add(record: LocalPull) -> None:
            record.reviews.append(Review(reviewer=reviewer, state=state))

        self._change_pull(self._pull(pull_number).branch, add)

    def set_mergeable(self, pull_number: int, mergeable: bool) -> None:
        """False: merging it fails, as a pull request with conflicts does."""

        def mark(record: LocalPull) -> None:
            record.mergeable = mergeable

        self._change_pull(self._pull(pull_number).branch, mark)

    # ----- inspection -----

    def issues(self) -> list[Issue]:
        """Every issue, whatever its labels, by number."""
        return [record.to_issue() for record in self._all_issues()]

    def pulls(self) -> list[LocalPull]:
        folder = self._store() / "pulls"
        found = [_read_model(LocalPull, folder / name) for name in _json_names(folder)]
        return sorted(found, key=lambda pull: pull.number)

    def comments(self, number: int) -> list[str]:
        return list(self._read_issue(number).comments)

    def labels_of(self, number: int) -> list[str]:
        return list(self._read_issue(number).labels)

    def state_of(self, number: int) -> str:
        """`open` or `closed`."""
        return self._read_issue(number).state

    def _pull(self, number: int) -> LocalPull:
        found = [pull for pull in self.pulls() if pull.number == number]
        if not found:
            raise TrackerError(f"{self._path}: no pull request #{number}")
        return found[0]

    def _change_pull(self, branch: str, change: Callable[[LocalPull], None]) -> LocalPull:
        """Apply `change` to the pull request of `branch` under its lock, save it, return it."""
        key = _branch_key(branch)
        file = self._store() / "pulls" / f"{key}.json"
        with file_lock(self._lock_file(f"pull-{key}")):
            if not file.exists():
                raise TrackerError(f"{self._path}: no pull request from {branch}")
            record = _read_model(LocalPull, file)
            change(record)
            _write_model(file, record)
        return record

    # ----- storage -----

    @property
    def _create_lock(self) -> Path:
        return self._path.with_name(self._path.name + ".lock")

    def _store(self) -> Path:
        """The data directory; TrackerError when there is no store (checked once)."""
        if not self._checked:
            if not self._data.is_dir():
                raise TrackerError(
                    f"no tracker store at {self._path}: seed one with LocalTracker.create()"
                )
            self._checked = True
        return self._data

    def _issue_file(self, number: int) -> Path:
        return self._store() / "issues" / f"{int(number)}.json"

    def _lock_file(self, name: str) -> Path:
        return self._store() / "locks" / name

    def _read_issue(self, number: int) -> _LocalIssue:
        try:
            return _read_model(_LocalIssue, self._issue_file(number))
        except FileNotFoundError:
            raise _NoIssue(f"{self._path}: no issue #{number}") from None

    def _all_issues(self) -> list[_LocalIssue]:
        folder = self._store() / "issues"
        found = [_read_model(_LocalIssue, folder / name) for name in _json_names(folder)]
        return sorted(found, key=lambda record: record.number)

    def _change(self, number: int, change: Callable[[_LocalIssue], bool]) -> bool:
        """Apply `change` to issue `number` under that issue's lock; it returns whether to save."""
        file = self._issue_file(number)
        if not file.exists():  # issues are never deleted, so checking before locking is safe
            raise _NoIssue(f"{self._path}: no issue #{number}")
        with file_lock(self._lock_file(f"issue-{int(number)}")):
            record = _read_model(_LocalIssue, file)
            if not change(record):
                return False
            _write_model(file, record)
        return True

    def _take_number(self) -> int:
        """The next number of the shared sequence. The `next` file is its own lock, held
        for one read and one write in place: every new pull request of every worker waits
        on this lock, so it is held for as few system calls as possible. (Numbers only
        grow, so the new text always covers the old.)"""
        file = self._store() / "next"
        fd = os.open(file, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            text = os.pread(fd, 64, 0)
            try:
                number = int(text)
            except ValueError:
                raise TrackerError(f"{file}: not a number: {text[:20]!r}") from None
            os.pwrite(fd, f"{number + 1}\n".encode(), 0)
        finally:
            os.close(fd)  # releases the lock
        return number

    def _build(
        self, issues: Iterable[_LocalIssue], pulls: Iterable[LocalPull], next_number: int
    ) -> None:
        """Write a complete data directory aside, move it into place, then the manifest.

        The caller holds the create lock and has checked that no data directory exists.
        """
        staging = Path(tempfile.mkdtemp(dir=self._data.parent, prefix=f".{self._data.name}."))
        try:
            for folder in ("issues", "pulls", "locks"):
                (staging / folder).mkdir()
            for record in issues:
                _write_model(staging / "issues" / f"{record.number}.json", record)
            for pull in pulls:
                _write_model(staging / "pulls" / f"{_branch_key(pull.branch)}.json", pull)
            _write_atomic(staging / "next", f"{next_number}\n".encode())
            os.rename(staging, self._data)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        manifest = {"format": _FORMAT, "data": self._data.name}
        _write_atomic(self._path, (json.dumps(manifest, indent=2) + "\n").encode())


def _branch_key(branch: str) -> str:
    """A file name for a branch, distinct for distinct branches: percent-quoted, or a hash
    when that is too long (`%%` never occurs in a quoted name)."""
    quoted = quote(branch, safe="")
    if len(quoted) <= 200:
        return quoted
    return "%%" + hashlib.sha256(branch.encode("utf-8", "surrogatepass")).hexdigest()


def _json_names(folder: Path) -> list[str]:
    """Record files in `folder`; the `.tmp` files of writes in flight are not records."""
    return [name for name in os.listdir(folder) if name.endswith(".json")]


def _read_model(model: type[_M], file: Path) -> _M:
    data = file.read_bytes()
    try:
        return model.model_validate_json(data)
    except ValueError as exc:
        raise TrackerError(f"{file}: not a tracker record: {exc}") from exc


def _write_model(file: Path, record: BaseModel) -> None:
    _write_atomic(file, record.model_dump_json(indent=2).encode())


def _write_atomic(file: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `file` and rename it over `file`: readers see the
    old record or the new one, never part of one. Not fsynced: this is test mode's stand-in
    for GitHub, and a sync per change would make every worker wait on the disk."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, file)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _add(labels: list[str], name: str) -> None:
    if name not in labels:
        labels.append(name)


def _drop(labels: list[str], name: str) -> None:
    if name in labels:
        labels.remove(name)
