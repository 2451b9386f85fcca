"""The tracker on a GitHub repository, through PyGithub: the `Tracker` of local and
distributed mode.

GitHub has no transactions and no compare-and-swap, so each operation is a few API calls in
an order (with a best-effort undo) that keeps an issue from being left without a state label
when one of them fails, and a claim wins by removing the ready label, which only one caller
can. A claim cut short anyway (its reply lost) is found later in the repository's issue
events (`interrupted_claims`). Whatever PyGithub raises becomes a TrackerError naming the
operation, never the token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import requests
from github import Github, GithubException
from github.Issue import Issue as GithubIssue
from github.PullRequest import PullRequest as GithubPull
from github.Repository import Repository

from flows.fleet.models import Issue, PullRequest
from flows.fleet.tracker import (
    CLAIM_GRACE_S,
    CLAIM_PREFIX,
    Labels,
    Review,
    ReviewPull,
    TrackerError,
    issue_of_branch,
    last_claim_in,
)

# What a PyGithub call can raise: API errors, and network errors once its retries gave up.
_API_ERRORS = (GithubException, requests.RequestException)

# How far back an interrupted-claims sweep reads the repository's issue events (newest
# first): a day before the grace period, in at most 30 requests of 100. Every poll sweeps,
# so a day covers a poller that was down that long; the bound keeps a busy repository (or
# a large fleet's own label events) from costing more.
EVENTS_HORIZON_S = 24 * 3600.0
EVENTS_MAX = 3000


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
        return last_claim_in(bodies)

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
