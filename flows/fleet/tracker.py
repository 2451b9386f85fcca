"""The fleet's issue tracker: which issues are ready, who works on which, and the pull request
each one ends in. `GitHubTracker` talks to GitHub through PyGithub; `LocalTracker` keeps the
same state in JSON files for test mode.

Labels carry the state, so several workers and fleets can share one repository:
ready-for-dev -(claim)-> in-progress -(finish)-> ai-review | ai-failed, and release() puts an
issue back to ready-for-dev. With auto-merge (flows/fleet/merge.py) the leader squash-merges
approved pull requests; their "Closes #N" closes the issue.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote

import requests
from github import Github, GithubException
from github.Issue import Issue as GithubIssue
from github.PullRequest import PullRequest as GithubPull
from github.Repository import Repository
from pydantic import BaseModel, ConfigDict, Field

from flows.fleet.models import (
    FAILED_LABEL,
    IN_PROGRESS_LABEL,
    READY_LABEL,
    REVIEW_LABEL,
    Issue,
    PullRequest,
)
from flows.locks import file_lock

# What a PyGithub call can raise: API errors, and network errors once its retries gave up.
_API_ERRORS = (GithubException, requests.RequestException)
log = logging.getLogger(__name__)


CLAIM_PREFIX = "Claimed by "
# A claim takes its three API calls within seconds (PyGithub's retries included); an issue
# whose ready label was taken longer ago than this, with no claim since, lost its claim.
CLAIM_GRACE_S = 600.0
# How far back an interrupted-claims sweep reads the repository's issue events (newest
# first): a day before the grace period, in at most 30 requests of 100. Every poll sweeps,
# so a day covers a poller that was down that long; the bound keeps a busy repository (or
# a large fleet's own label events) from costing more.
EVENTS_HORIZON_S = 24 * 3600.0
EVENTS_MAX = 3000


class TrackerError(Exception):
    """A tracker operation failed; the message names the operation and the issue."""


class Review(BaseModel):
    """One review of a pull request, as GitHub reports it."""

    model_config = ConfigDict(frozen=True)

    reviewer: str
    state: str  # APPROVED, CHANGES_REQUESTED, COMMENTED, DISMISSED
    commit: str | None = Field(default=None, description="The head commit it reviewed")
    trusted: bool = Field(
        default=True, description="The reviewer owns the repository or may write to it"
    )


class ReviewPull(BaseModel):
    """An open pull request of the fleet whose issue waits for review: from the fleet's branch
    `ai-feature/issue-N` of the repository itself (not a fork), for issue N, open and labelled
    for review. A candidate for auto-merge."""

    model_config = ConfigDict(frozen=True)

    number: int
    url: str
    branch: str
    issue: int
    head_sha: str | None = Field(default=None, description="Merged only if still the head")
    reviews: tuple[Review, ...] = Field(default=(), description="Oldest first")


def issue_of_branch(branch: str) -> int | None:
    """N for the fleet's branch `ai-feature/issue-N`, exactly as branch_name() writes it."""
    found = re.fullmatch(r"ai-feature/issue-([1-9][0-9]*)", branch)
    return int(found.group(1)) if found else None


# GitHub closes the issues a pull request's body names this way when it merges into the default
# branch: https://docs.github.com/en/issues/tracking-your-work-with-issues/linking-a-pull-request-to-an-issue
_CLOSING = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?\s+#([0-9]+)\b", re.I)


def closing_references(body: str) -> list[int]:
    """Issue numbers `body` closes ("Closes #3", "fixes: #4", ...), in order, once each."""
    return list(dict.fromkeys(int(number) for number in _CLOSING.findall(body)))


@dataclass(frozen=True)
class Labels:
    ready: str = READY_LABEL
    in_progress: str = IN_PROGRESS_LABEL
    review: str = REVIEW_LABEL
    failed: str = FAILED_LABEL

    def names(self) -> tuple[str, ...]:
        return (self.ready, self.in_progress, self.review, self.failed)


class Tracker(Protocol):
    @property
    def labels(self) -> Labels: ...

    def list_ready(self) -> list[Issue]:
        """Open issues with the ready label, oldest first, pull requests excluded."""
        ...

    def get(self, number: int) -> Issue:
        """One issue with its current labels, whatever they are; TrackerError if none."""
        ...

    def claim(self, issue: Issue, claimant: str) -> bool:
        """Take the issue; True only for the one caller that won it."""
        ...

    def release(self, issue: Issue, reason: str) -> None:
        """Give a claimed issue back: in-progress removed, ready label again, comment why."""
        ...

    def last_claim(self, number: int) -> str | None:
        """Who claimed the issue last (the text after "Claimed by"), None if nobody did."""
        ...

    def interrupted_claims(self, older_than_s: float = CLAIM_GRACE_S) -> list[Issue]:
        """Open issues a claim began on but never finished: the fleet took the ready label
        more than `older_than_s` ago, and since then the issue got no state label and no
        claim comment. What a lost reply to the label's removal leaves behind (the caller
        saw an error, or a 404 on the retry, and believed another worker had won)."""
        ...

    def open_pull_request(self, issue: Issue, branch: str, title: str, body: str) -> PullRequest:
        """Open a pull request from `branch`, or update the open one (created=False)."""
        ...

    def finish(self, issue: Issue, ok: bool, comment: str) -> None:
        """in-progress -> review label (ok) or failed label; post `comment` when not empty."""
        ...

    def review_pulls(self) -> list[ReviewPull]:
        """The fleet's open pull requests whose issue is open with the review label, with
        their reviews (see ReviewPull): what auto-merge looks at."""
        ...

    def merge(self, pull: ReviewPull) -> None:
        """Squash-merge `pull` (only while its head is `pull.head_sha`); its "Closes #N" closes
        the issue. TrackerError when it cannot be merged: conflicts, branch protection, a head
        that moved, an already closed pull request."""
        ...


# ----- GitHub ----------------------------------------------------------------------------------


class GitHubTracker:
    """The tracker on a GitHub repository, through an injected PyGithub client.

    Transient errors (5xx, rate limits) are retried by PyGithub's GithubRetry; what is left
    becomes a TrackerError.
    """

    def __init__(
        self, repo: Repository, labels: Labels, owner_login: str, client: Github | None = None
    ) -> None:
        self._repo = repo
        self._labels = labels
        self._owner_login = owner_login
        self._client = client
        self._login: str | None = None  # the token's account, read when first needed

    @classmethod
    def connect(cls, client: Github, full_name: str, labels: Labels) -> GitHubTracker:
        """Open `owner/name`; TrackerError when it is unreachable or lacks one of the labels."""
        with _api_errors(f"open repository {full_name}"):
            repo = client.get_repo(full_name)
            existing = {label.name.lower() for label in repo.get_labels()}
            owner_login = repo.owner.login
        missing = [name for name in labels.names() if name.lower() not in existing]
        if missing:
            names = ", ".join(repr(name) for name in missing)
            raise TrackerError(
                f"repository {repo.full_name} has no label {names}: "
                "create it on GitHub (Issues > Labels) or configure another label name"
            )
        return cls(repo, labels, owner_login, client)

    def __repr__(self) -> str:
        return f"GitHubTracker({self.full_name!r})"

    @property
    def labels(self) -> Labels:
        return self._labels

    @property
    def full_name(self) -> str:
        return self._repo.full_name

    @property
    def clone_url(self) -> str:
        return self._repo.clone_url

    @property
    def default_branch(self) -> str:
        return self._repo.default_branch

    def list_ready(self) -> list[Issue]:
        with _api_errors(f"list ready issues of {self.full_name}"):
            found = self._repo.get_issues(
                state="open", labels=[self._labels.ready], sort="created", direction="asc"
            )
            # The page's JSON, not attributes: reading one the page lacks (`pull_request` on
            # a plain issue) makes PyGithub GET that issue again.
            rows = [item._rawData for item in found]
        return [_issue_from_json(data) for data in rows if "pull_request" not in data]

    def get(self, number: int) -> Issue:
        with _api_errors(f"read {self.full_name}#{number}"):
            return _issue_from_json(self._repo.get_issue(number)._rawData)

    def claim(self, issue: Issue, claimant: str) -> bool:
        handle = self._handle(issue)
        with _api_errors(f"claim {self._ref(issue)}"):
            if not self._take_ready_label(handle):
                return False
            try:
                handle.add_to_labels(self._labels.in_progress)
                handle.create_comment(f"{CLAIM_PREFIX}{claimant}")
            except _API_ERRORS:
                self._undo_claim(handle)
                raise
        return True

    def release(self, issue: Issue, reason: str) -> None:
        handle = self._handle(issue)
        with _api_errors(f"release {self._ref(issue)}"):
            handle.create_comment(f"Released: {reason}")  # first: its failure moves no label
            self._remove_label(handle, self._labels.in_progress)
            try:
                handle.add_to_labels(self._labels.ready)  # last: from here anyone may claim it
            except _API_ERRORS:
                with suppress(*_API_ERRORS):  # never left without a state label: still claimed
                    handle.add_to_labels(self._labels.in_progress)
                raise

    def last_claim(self, number: int) -> str | None:
        issue = Issue(number=number, title="")
        with _api_errors(f"read the comments of {self._ref(issue)}"):
            bodies = [c._rawData.get("body") or "" for c in self._handle(issue).get_comments()]
        return _last_claim(bodies)

    def interrupted_claims(self, older_than_s: float = CLAIM_GRACE_S) -> list[Issue]:
        login = self._account_login()
        if login is None:
            return []  # cannot tell the fleet's removals of the ready label from others'
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        ready = self._labels.ready.lower()
        state_labels = {name.lower() for name in self._labels.names()}
        seen: set[int] = set()
        found: list[Issue] = []
        with _api_errors(f"look for interrupted claims in {self.full_name}"):
            recent = _events_since(
                self._repo.get_issues_events(), cutoff - timedelta(seconds=EVENTS_HORIZON_S)
            )
            never = datetime.min.replace(tzinfo=UTC)
            recent.sort(key=lambda data: _timestamp(data.get("created_at")) or never, reverse=True)
            for data in recent:  # newest first
                issue = data.get("issue") or {}
                number = issue.get("number")
                if data.get("event") != "unlabeled" or number is None or number in seen:
                    continue
                if str((data.get("label") or {}).get("name", "")).lower() != ready:
                    continue
                seen.add(number)  # only the latest removal of the ready label counts
                taken_at = _timestamp(data.get("created_at"))
                if (
                    (data.get("actor") or {}).get("login") != login
                    or taken_at is None
                    or taken_at > cutoff
                    or issue.get("state") != "open"
                    or "pull_request" in issue
                    or {str(label.get("name", "")).lower() for label in issue.get("labels", [])}
                    & state_labels
                ):
                    continue
                comments = self._handle(_issue_from_json(issue)).get_comments()
                claimed_since = any(
                    (c._rawData.get("body") or "").startswith(CLAIM_PREFIX)
                    and (_timestamp(c._rawData.get("created_at")) or taken_at) >= taken_at
                    for c in comments
                )
                if not claimed_since:
                    found.append(_issue_from_json(issue))
        return found

    def open_pull_request(self, issue: Issue, branch: str, title: str, body: str) -> PullRequest:
        # Always `owner:branch`: GitHub ignores a head filter without the owner.
        head = f"{self._owner_login}:{branch}"
        with _api_errors(f"open a pull request from {branch} for {self._ref(issue)}"):
            pull = self._open_pull(head)
            if pull is None:
                created = self._create_pull(head, title, body)
                if created is not None:
                    return _pull_request(created, branch, created=True)
                pull = self._open_pull(head)  # another creator won the race
                if pull is None:
                    raise TrackerError(
                        f"open a pull request from {branch} for {self._ref(issue)}: GitHub "
                        f"says one exists but lists no open pull request from {head}"
                    )
            pull.edit(title=title, body=body)
            return _pull_request(pull, branch, created=False)

    def finish(self, issue: Issue, ok: bool, comment: str) -> None:
        handle = self._handle(issue)
        outcome = self._labels.review if ok else self._labels.failed
        with _api_errors(f"finish {self._ref(issue)}"):
            handle.add_to_labels(outcome)
            self._remove_label(handle, self._labels.in_progress)
            if not ok:  # a success whose comment failed is then failed: not both outcomes
                self._remove_label(handle, self._labels.review)
            if comment:
                handle.create_comment(comment)

    def review_pulls(self) -> list[ReviewPull]:
        with _api_errors(f"list pull requests in review of {self.full_name}"):
            # Page JSON only (see list_ready): two listings, then one request per candidate.
            issues = self._repo.get_issues(state="open", labels=[self._labels.review])
            in_review = {i._rawData["number"] for i in issues if "pull_request" not in i._rawData}
            if not in_review:
                return []
            found = []
            for pull in self._repo.get_pulls(state="open", base=self.default_branch):
                data = pull._rawData
                head = data.get("head") or {}
                issue = issue_of_branch(str(head.get("ref") or ""))
                head_repo = str((head.get("repo") or {}).get("full_name") or "")
                ours = head_repo.lower() == self.full_name.lower()  # a fork's branch is not
                if issue is not None and issue in in_review and ours:
                    reviews = tuple(_review_from_json(r._rawData) for r in pull.get_reviews())
                    found.append(
                        ReviewPull(
                            number=data["number"],
                            url=data["html_url"],
                            branch=head["ref"],
                            issue=issue,
                            head_sha=head.get("sha"),
                            reviews=reviews,
                        )
                    )
        return found

    def merge(self, pull: ReviewPull) -> None:
        url = f"{self._repo.url}/pulls/{pull.number}"
        handle = GithubPull(self._repo.requester, url=url, completed=False)  # no GET
        action = f"merge pull request {self.full_name}#{pull.number}"
        with _api_errors(action):
            if pull.head_sha:  # GitHub answers 409 if the branch moved since it was reviewed
                status = handle.merge(merge_method="squash", sha=pull.head_sha)
            else:
                status = handle.merge(merge_method="squash")
        if not status.merged:
            raise TrackerError(f"{action}: GitHub answered {status.message}")

    def _ref(self, issue: Issue) -> str:
        return f"{self.full_name}#{issue.number}"

    def _account_login(self) -> str | None:
        """The token's account (whose name the fleet's label changes carry); None when the
        token may not read it (a GitHub App installation token)."""
        if self._login is None and self._client is not None:
            try:
                self._login = self._client.get_user().login
            except _API_ERRORS:
                self._client = None  # do not ask again on every poll
        return self._login

    def _handle(self, issue: Issue) -> GithubIssue:
        """An issue object to act on, without the GET that `repo.get_issue()` makes."""
        url = f"{self._repo.url}/issues/{issue.number}"
        return GithubIssue(self._repo.requester, url=url, completed=False)

    def _take_ready_label(self, handle: GithubIssue) -> bool:
        """Remove the ready label; False when it is already gone.

        GitHub has no compare-and-swap, but removing a label the issue no longer has answers
        404, so of all the callers racing for one issue exactly one succeeds.
        """
        try:
            handle.remove_from_labels(self._labels.ready)
        except GithubException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _undo_claim(self, handle: GithubIssue) -> None:
        """After a half-done claim, best effort: never leave the issue without either label."""
        with suppress(*_API_ERRORS):
            self._remove_label(handle, self._labels.in_progress)
        with suppress(*_API_ERRORS):
            handle.add_to_labels(self._labels.ready)

    def _remove_label(self, handle: GithubIssue, name: str) -> None:
        """Remove a label; one the issue does not have is not an error."""
        try:
            handle.remove_from_labels(name)
        except GithubException as exc:
            if exc.status != 404:
                raise

    def _open_pull(self, head: str) -> GithubPull | None:
        return next(iter(self._repo.get_pulls(state="open", head=head)), None)

    def _create_pull(self, head: str, title: str, body: str) -> GithubPull | None:
        """Create the pull request; None when GitHub says an open one already exists."""
        try:
            return self._repo.create_pull(
                base=self.default_branch, head=head, title=title, body=body
            )
        except GithubException as exc:
            if exc.status == 422 and "already exists" in _github_message(exc):
                return None
            raise


@contextmanager
def _api_errors(action: str) -> Iterator[None]:
    """Turn what PyGithub raises into a TrackerError naming `action` (the token never appears:
    PyGithub sends it in a header, and only the response's status and message are quoted)."""
    try:
        yield
    except GithubException as exc:
        raise TrackerError(f"{action}: GitHub answered {_github_message(exc)}") from exc
    except requests.RequestException as exc:
        raise TrackerError(f"{action}: GitHub unreachable ({type(exc).__name__})") from exc


def _github_message(exc: GithubException) -> str:
    """`422 Validation Failed: A pull request already exists for acme:branch.`"""
    data: Any = exc.data if isinstance(exc.data, dict) else {}
    parts = [str(data.get("message") or exc.message or "")]
    errors = data.get("errors")
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict) and error.get("message"):
            parts.append(str(error["message"]))
    return f"{exc.status} " + ": ".join(part for part in parts if part)


def requeue_interrupted_claims(tracker: Tracker, older_than_s: float = CLAIM_GRACE_S) -> list[int]:
    """Put issues whose claim was interrupted back in the queue (see
    `Tracker.interrupted_claims`); their numbers. A failure is only a warning: the next poll
    looks again."""
    try:
        issues = tracker.interrupted_claims(older_than_s)
    except TrackerError as exc:
        log.warning("could not look for interrupted claims: %s", exc)
        return []
    requeued = []
    for issue in issues:
        try:
            tracker.release(issue, "a claim on this issue was interrupted (a lost reply); "
                                   "it is ready again")  # fmt: skip
        except TrackerError as exc:
            log.warning("could not put #%d back in the queue: %s", issue.number, exc)
            continue
        requeued.append(issue.number)
    return requeued


def _timestamp(value: Any) -> datetime | None:
    """GitHub's `2026-01-02T03:04:05Z`, as an aware datetime; None when absent or invalid."""
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _events_since(events: Iterable[Any], horizon: datetime) -> list[dict[str, Any]]:
    """The raw events of a newest-first listing down to `horizon` (at most EVENTS_MAX)."""
    recent = []
    for event in islice(events, EVENTS_MAX):
        data = event._rawData
        created = _timestamp(data.get("created_at"))
        if created is not None and created < horizon:
            break
        recent.append(data)
    return recent


def _last_claim(comments: Iterable[str]) -> str | None:
    claims = [body.removeprefix(CLAIM_PREFIX) for body in comments if body.startswith(CLAIM_PREFIX)]
    return claims[-1] if claims else None


def _issue_from_json(data: dict[str, Any]) -> Issue:
    return Issue(
        number=data["number"],
        title=data["title"],
        body=data.get("body") or "",
        labels=tuple(label["name"] for label in data.get("labels") or []),
        url=data.get("html_url"),
    )


def _review_from_json(data: dict[str, Any]) -> Review:
    user = data.get("user") or {}
    return Review(
        reviewer=str(user.get("login") or "ghost"),  # a deleted account is null
        state=str(data.get("state") or ""),
        commit=data.get("commit_id"),
        # anyone may review a public repository: only these approvals count
        trusted=data.get("author_association") in ("OWNER", "MEMBER", "COLLABORATOR"),
    )


def _pull_request(pull: GithubPull, branch: str, *, created: bool) -> PullRequest:
    return PullRequest(number=pull.number, url=pull.html_url, branch=branch, created=created)


# ----- local JSON store ------------------------------------------------------------------------


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
        return _last_claim(self._read_issue(number).comments)

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


# ----- mock issues for test mode ---------------------------------------------------------------

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
