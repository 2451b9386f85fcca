"""`FakeGitHub`: a stateful in-memory subset of the GitHub REST API v3 for one repository.

Covers what the fleet needs through PyGithub: the repo, the authenticated user, issues
(list with filters and Link pagination, get, create, edit), issue labels, repo labels,
comments, assignees and pull requests (list, create, edit, reviews, merge). Issues and pull
requests share one number sequence and pull requests are listed among issues with a
`pull_request` key, as on GitHub.

GitHub quirks that are mimicked on purpose:
- `GET /pulls?head=branch` (no `owner:`) ignores the filter and lists every matching PR.
- removing a label the issue does not have answers 404 "Label does not exist".
- a second open PR for the same head and base answers 422 "A pull request already exists".
- adding an unknown label to an issue creates it on the repository.
- merging answers 405 when the pull request is not mergeable (or not open) and 409 when the
  `sha` given is no longer the head; a merge into the default branch closes the issues the
  pull request's body names with a closing keyword ("Closes #N").
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, unquote, urlencode

from tests.fakes import LoopbackServer, Request, Response

DOCS_URL = "https://docs.github.com/rest"
HTML_ROOT = "https://github.com"
RATE_LIMIT = 5000
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
MERGE_METHODS = ("merge", "squash", "rebase")
# GitHub's closing keywords: close(s|d), fix(es|ed), resolve(s|d), then `#N`.
CLOSING_KEYWORDS = re.compile(r"\b(?:close[sd]?|fix(?:e[sd])?|resolve[sd]?):?\s+#([0-9]+)\b", re.I)


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the fake saw it. The token itself is never stored, only whether it matched."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    auth_scheme: str | None  # "token", "Bearer", ... or None when no Authorization header
    token_ok: bool
    status: int


@dataclass
class _Label:
    id: int
    name: str
    color: str
    description: str


@dataclass
class _Comment:
    id: int
    body: str
    user: str
    created_at: str


@dataclass
class _Review:
    id: int
    user: str
    state: str
    commit_id: str
    submitted_at: str
    body: str = ""
    association: str = "MEMBER"  # OWNER, MEMBER, COLLABORATOR, CONTRIBUTOR, NONE, ...


@dataclass
class _Pull:
    head_owner: str
    head: str
    base: str
    draft: bool
    sha: str = ""  # the head commit
    mergeable: bool = True
    merged_at: str | None = None
    merge_sha: str | None = None
    reviews: list[_Review] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sha = self.sha or hashlib.sha1(self.label.encode()).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.head_owner}:{self.head}"


@dataclass
class _Issue:
    id: int
    number: int
    title: str
    body: str
    user: str
    created_at: str
    updated_at: str
    state: str = "open"
    state_reason: str | None = None
    closed_at: str | None = None
    labels: list[str] = field(default_factory=list)
    assignees: list[str] = field(default_factory=list)
    comments: list[_Comment] = field(default_factory=list)
    pull: _Pull | None = None


class FakeGitHub(LoopbackServer):
    """GitHub REST stand-in for `owner/repo`; requires `Authorization: token|Bearer <token>`."""

    def __init__(
        self,
        token: str = "test-token",
        owner: str = "acme",
        repo: str = "widgets",
        *,
        login: str = "fleet-bot",
        clone_url: str | None = None,
        default_branch: str = "main",
        clock_start: datetime | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.owner = owner
        self.repo = repo
        self.login = login
        self.clone_url = clone_url or f"{HTML_ROOT}/{owner}/{repo}.git"
        self.default_branch = default_branch
        self._lock = threading.Lock()
        self._ids = itertools.count(1001)
        self._numbers = itertools.count(1)
        self._seconds = itertools.count()
        # timestamps tick one second per change from here (a past start makes them "old")
        self._epoch = (clock_start or datetime.now(UTC)).replace(microsecond=0)
        self._issues: dict[int, _Issue] = {}
        self._labels: dict[str, _Label] = {}
        self._faults: list[Response] = []
        self._lost_replies = 0
        self._events: list[dict[str, Any]] = []  # issue events, oldest first
        self._log: list[LoggedRequest] = []

    # ----- test controls -----------------------------------------------------------------

    def add_label(self, name: str, color: str = "ededed", description: str = "") -> None:
        """Create a repository label (no-op when it exists)."""
        with self._lock:
            self._ensure_label(name, color, description)

    def add_issue(
        self,
        title: str,
        body: str = "",
        labels: list[str] | tuple[str, ...] = (),
        *,
        state: str = "open",
        assignees: list[str] | tuple[str, ...] = (),
        author: str | None = None,
    ) -> int:
        """Create an issue (labels are created on the repo as needed); returns its number."""
        with self._lock:
            issue = self._new_issue(title, body, author or self.owner)
            issue.labels = [self._ensure_label(name).name for name in labels]
            issue.assignees = list(assignees)
            self._set_state(issue, state)
            return issue.number

    def add_pull(
        self,
        head: str,
        title: str = "",
        body: str = "",
        *,
        base: str | None = None,
        draft: bool = False,
        state: str = "open",
    ) -> int:
        """Create a pull request from `head` (`branch` or `owner:branch`); returns its number."""
        with self._lock:
            issue = self._new_issue(title or head, body, self.login)
            head_owner, branch = self._split_head(head)
            issue.pull = _Pull(head_owner, branch, base or self.default_branch, draft)
            self._set_state(issue, state)
            return issue.number

    def add_review(
        self,
        number: int,
        reviewer: str,
        state: str = "APPROVED",
        *,
        commit_id: str | None = None,
        body: str = "",
        association: str = "MEMBER",
    ) -> int:
        """A submitted review of pull request `number` (APPROVED, CHANGES_REQUESTED, COMMENTED,
        DISMISSED) by `reviewer` (their `author_association` with the repository), of
        `commit_id` (default: the current head); returns its id."""
        with self._lock:
            pull = self._pull_of(number)
            review = _Review(
                next(self._ids), reviewer, state, commit_id or pull.sha, self._tick(), body,
                association,
            )  # fmt: skip
            pull.reviews.append(review)
            return review.id

    def unlabel(self, number: int, name: str, actor: str) -> None:
        """Someone (`actor`, e.g. a human on the web UI) removes a label from an issue."""
        with self._lock:
            issue = self._issues[number]
            issue.labels = [n for n in issue.labels if n.lower() != name.lower()]
            self._record_event(issue, "unlabeled", name, actor)
            self._touch(issue)

    def set_mergeable(self, number: int, mergeable: bool) -> None:
        """False: merging pull request `number` answers 405, as with conflicts."""
        with self._lock:
            self._pull_of(number).mergeable = mergeable

    def push(self, number: int) -> str:
        """A new commit on the head branch of pull request `number`; returns its sha."""
        with self._lock:
            pull = self._pull_of(number)
            pull.sha = hashlib.sha1(f"{pull.sha}+".encode()).hexdigest()
            return pull.sha

    def fail_next(self, n: int, status: int = 502, headers: dict[str, str] | None = None) -> None:
        """Answer the next `n` requests with `status` (before authentication, like a gateway)."""
        message = _phrase(status)
        with self._lock:
            for _ in range(n):
                self._faults.append(Response(status, {"message": message}, dict(headers or {})))

    def lose_next_reply(self, status: int = 502) -> None:
        """Carry out the next request, then answer `status` as if the reply had been lost
        on the way (a gateway timing out after the change was made)."""
        with self._lock:
            self._lost_replies += 1

    def rate_limit_next(self, n: int, reset_in_seconds: int = 60, status: int = 403) -> None:
        """Answer the next `n` requests with GitHub's primary rate-limit error."""
        reset = int(time.time()) + reset_in_seconds
        headers = {
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Used": str(RATE_LIMIT),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Resource": "core",
        }
        body = {
            "message": "API rate limit exceeded for user ID 1.",
            "documentation_url": f"{DOCS_URL}/overview/rate-limits-for-the-rest-api",
        }
        with self._lock:
            for _ in range(n):
                self._faults.append(Response(status, body, dict(headers)))

    # ----- inspection --------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        """Every request served so far, oldest first."""
        with self._lock:
            return list(self._log)

    @property
    def issues(self) -> list[dict[str, Any]]:
        """All issues (not pull requests) as GitHub renders them, by number."""
        with self._lock:
            return [self._issue_json(i) for i in self._sorted_issues() if i.pull is None]

    @property
    def pulls(self) -> list[dict[str, Any]]:
        """All pull requests as GitHub renders them, by number."""
        with self._lock:
            return [self._pull_json(i) for i in self._sorted_issues() if i.pull is not None]

    @property
    def comments(self) -> dict[int, list[str]]:
        """Comment bodies per issue/PR number, oldest first (numbers without comments omitted)."""
        with self._lock:
            return {
                i.number: [c.body for c in i.comments] for i in self._sorted_issues() if i.comments
            }

    @property
    def labels(self) -> list[str]:
        """Names of the repository's labels."""
        with self._lock:
            return [label.name for label in self._labels.values()]

    def issue(self, number: int) -> dict[str, Any]:
        """One issue or PR as `GET /repos/{o}/{r}/issues/{n}` renders it; KeyError if unknown."""
        with self._lock:
            return self._issue_json(self._issues[number])

    def label_names(self, number: int) -> list[str]:
        """Label names on one issue or PR."""
        with self._lock:
            return list(self._issues[number].labels)

    def pull(self, number: int) -> dict[str, Any]:
        """One PR as `GET /repos/{o}/{r}/pulls/{n}` renders it; KeyError if unknown."""
        with self._lock:
            self._pull_of(number)
            return self._pull_json(self._issues[number])

    # ----- HTTP entry point --------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        scheme, token_ok = self._check_auth(request.headers.get("authorization"))
        with self._lock:
            response = self._respond(request, token_ok)
            body = _safe_json(request)
            self._log.append(
                LoggedRequest(
                    request.method,
                    request.path,
                    dict(request.query),
                    body,
                    scheme,
                    token_ok,
                    response.status,
                )
            )
        return response

    def _respond(self, request: Request, token_ok: bool) -> Response:
        if self._faults:
            return self._faults.pop(0)
        if not token_ok:
            return _error(401, "Bad credentials")
        try:
            body = request.json()
        except ValueError:
            return _error(400, "Problems parsing JSON")
        response = self._route(request, body)
        if self._lost_replies:
            self._lost_replies -= 1
            return _error(502, _phrase(502))
        response.headers = {**self._rate_headers(), **response.headers}
        return response

    def _check_auth(self, header: str | None) -> tuple[str | None, bool]:
        if not header:
            return None, False
        scheme, _, credential = header.partition(" ")
        return scheme, scheme.lower() in ("token", "bearer") and credential == self.token

    def _rate_headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(RATE_LIMIT),
            "X-RateLimit-Remaining": str(RATE_LIMIT - 1),
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Resource": "core",
        }

    # ----- routing -----------------------------------------------------------------------

    def _route(self, request: Request, body: Any) -> Response:
        segments = [unquote(s) for s in request.path.strip("/").split("/")]
        match segments:
            case ["user"] if request.method == "GET":
                return Response(200, self._user_json(self.login))
            case ["repos", owner, repo, *rest] if self._is_our_repo(owner, repo):
                return self._route_repo(request, rest, body)
        return _error(404, "Not Found")

    def _route_repo(self, request: Request, rest: list[str], body: Any) -> Response:
        match request.method, rest:
            case "GET", []:
                return Response(200, self._repo_json())
            case "GET", ["issues"]:
                return self._list_issues(request)
            case "POST", ["issues"]:
                return self._create_issue(body)
            case "GET", ["issues", "events"]:
                events = [self._event_json(event) for event in reversed(self._events)]
                return self._paginate(events, request)
            case _, ["issues", number, *sub] if number.isdigit():
                issue = self._issues.get(int(number))
                if issue is None:
                    return _error(404, "Not Found")
                return self._route_issue(request, issue, sub, body)
            case "GET", ["labels"]:
                labels = [self._label_json(label) for label in self._labels.values()]
                return self._paginate(labels, request)
            case "POST", ["labels"]:
                return self._create_label(body)
            case "GET", ["labels", name]:
                label = self._find_label(name)
                return Response(200, self._label_json(label)) if label else _error(404, "Not Found")
            case "GET", ["pulls"]:
                return self._list_pulls(request)
            case "POST", ["pulls"]:
                return self._create_pull(body)
            case _, ["pulls", number, *sub] if number.isdigit():
                return self._route_pull(request, int(number), sub, body)
        return _error(404, "Not Found")

    def _route_issue(self, request: Request, issue: _Issue, sub: list[str], body: Any) -> Response:
        match request.method, sub:
            case "GET", []:
                return Response(200, self._issue_json(issue))
            case "PATCH", []:
                return self._edit_issue(issue, body)
            case "GET", ["labels"]:
                return self._paginate(self._issue_labels_json(issue), request)
            case "POST", ["labels"]:
                return self._add_labels(issue, body, replace=False)
            case "PUT", ["labels"]:
                return self._add_labels(issue, body, replace=True)
            case "DELETE", ["labels"]:
                for name in issue.labels:
                    self._record_event(issue, "unlabeled", name)
                issue.labels = []
                self._touch(issue)
                return Response(204)
            case "DELETE", ["labels", name]:
                return self._remove_label(issue, name)
            case "GET", ["comments"]:
                comments = [self._comment_json(issue, c) for c in issue.comments]
                return self._paginate(comments, request)
            case "POST", ["comments"]:
                return self._create_comment(issue, body)
            case "POST", ["assignees"]:
                return self._change_assignees(issue, body, add=True)
            case "DELETE", ["assignees"]:
                return self._change_assignees(issue, body, add=False)
        return _error(404, "Not Found")

    def _route_pull(self, request: Request, number: int, sub: list[str], body: Any) -> Response:
        issue = self._issues.get(number)
        if issue is None or issue.pull is None:
            return _error(404, "Not Found")
        match request.method, sub:
            case "GET", []:
                return Response(200, self._pull_json(issue))
            case "PATCH", []:
                return self._edit_pull(issue, body)
            case "GET", ["reviews"]:
                reviews = [self._review_json(issue, r) for r in issue.pull.reviews]
                return self._paginate(reviews, request)
            case "GET", ["merge"]:
                return Response(204) if issue.pull.merged_at else _error(404, "Not Found")
            case "PUT", ["merge"]:
                return self._merge_pull(issue, body)
        return _error(404, "Not Found")

    # ----- issues ------------------------------------------------------------------------

    def _list_issues(self, request: Request) -> Response:
        query = request.query
        issues = [i for i in self._issues.values() if _state_matches(i, query.get("state"))]
        wanted = [n.strip().lower() for n in query.get("labels", "").split(",") if n.strip()]
        issues = [i for i in issues if set(wanted) <= {n.lower() for n in i.labels}]
        issues = [i for i in issues if _assignee_matches(i, query.get("assignee"))]
        if "creator" in query:
            issues = [i for i in issues if i.user.lower() == query["creator"].lower()]
        issues = _sorted(issues, query.get("sort", "created"), query.get("direction", "desc"))
        return self._paginate([self._issue_json(i) for i in issues], request)

    def _create_issue(self, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("title"), str):
            return _missing_field("Issue", "title")
        issue = self._new_issue(body["title"], body.get("body") or "", self.login)
        issue.labels = [self._ensure_label(name).name for name in body.get("labels") or []]
        issue.assignees = list(body.get("assignees") or [])
        return Response(201, self._issue_json(issue))

    def _edit_issue(self, issue: _Issue, body: Any) -> Response:
        if not isinstance(body, dict):
            return _error(400, "Problems parsing JSON")
        if body.get("state", "open") not in ("open", "closed"):
            return _invalid_field("Issue", "state")
        if "title" in body:
            issue.title = body["title"]
        if "body" in body:
            issue.body = body["body"] or ""
        if "labels" in body:
            issue.labels = [self._ensure_label(name).name for name in _names(body["labels"])]
        if "assignees" in body:
            issue.assignees = list(body["assignees"] or [])
        if "state" in body:
            self._set_state(issue, body["state"], body.get("state_reason"))
        self._touch(issue)
        return Response(200, self._issue_json(issue))

    def _add_labels(self, issue: _Issue, body: Any, *, replace: bool) -> Response:
        names = _names(body.get("labels") if isinstance(body, dict) else body)
        current = [] if replace else list(issue.labels)
        for name in names:
            label = self._ensure_label(name)
            if label.name.lower() not in {n.lower() for n in current}:
                current.append(label.name)
        for name in {n.lower(): n for n in issue.labels}.keys() - {n.lower() for n in current}:
            self._record_event(issue, "unlabeled", name)
        for name in current:
            if name.lower() not in {n.lower() for n in issue.labels}:
                self._record_event(issue, "labeled", name)
        issue.labels = current
        self._touch(issue)
        return Response(200, self._issue_labels_json(issue))

    def _remove_label(self, issue: _Issue, name: str) -> Response:
        kept = [n for n in issue.labels if n.lower() != name.lower()]
        if len(kept) == len(issue.labels):
            return _error(404, "Label does not exist")
        self._record_event(issue, "unlabeled", name)
        issue.labels = kept
        self._touch(issue)
        return Response(200, self._issue_labels_json(issue))

    def _create_comment(self, issue: _Issue, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("body"), str):
            return _missing_field("IssueComment", "body")
        comment = _Comment(next(self._ids), body["body"], self.login, self._tick())
        issue.comments.append(comment)
        self._touch(issue)
        return Response(201, self._comment_json(issue, comment))

    def _change_assignees(self, issue: _Issue, body: Any, *, add: bool) -> Response:
        logins = list(body.get("assignees") or []) if isinstance(body, dict) else []
        if add:
            issue.assignees += [login for login in logins if login not in issue.assignees]
        else:
            issue.assignees = [login for login in issue.assignees if login not in logins]
        self._touch(issue)
        return Response(201 if add else 200, self._issue_json(issue))

    # ----- labels ------------------------------------------------------------------------

    def _create_label(self, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _missing_field("Label", "name")
        if self._find_label(body["name"]):
            return _validation_failed({"resource": "Label", "code": "already_exists"})
        label = self._ensure_label(body["name"], body.get("color"), body.get("description"))
        return Response(201, self._label_json(label))

    def _find_label(self, name: str) -> _Label | None:
        return self._labels.get(name.lower())

    def _ensure_label(
        self, name: str, color: str | None = None, description: str | None = None
    ) -> _Label:
        label = self._find_label(name)
        if label is None:
            label = _Label(next(self._ids), name, color or "ededed", description or "")
            self._labels[name.lower()] = label
        return label

    # ----- pull requests -----------------------------------------------------------------

    def _list_pulls(self, request: Request) -> Response:
        query = request.query
        pulls = [i for i in self._issues.values() if i.pull is not None]
        pulls = [i for i in pulls if _state_matches(i, query.get("state"))]
        head = query.get("head", "")
        if ":" in head:  # GitHub ignores a head filter without "owner:"
            pulls = [i for i in pulls if i.pull and i.pull.label.lower() == head.lower()]
        if "base" in query:
            pulls = [i for i in pulls if i.pull and i.pull.base == query["base"]]
        pulls = _sorted(pulls, query.get("sort", "created"), query.get("direction", "desc"))
        return self._paginate([self._pull_json(i) for i in pulls], request)

    def _create_pull(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return _error(400, "Problems parsing JSON")
        for name in ("head", "base", "title"):
            if not isinstance(body.get(name), str) or not body[name]:
                return _missing_field("PullRequest", name)
        head_owner, branch = self._split_head(body["head"])
        pull = _Pull(head_owner, branch, body["base"], bool(body.get("draft", False)))
        if self._open_pull_exists(pull):
            message = f"A pull request already exists for {pull.label}."
            error = {"resource": "PullRequest", "code": "custom", "message": message}
            return _validation_failed(error)
        issue = self._new_issue(body["title"], body.get("body") or "", self.login)
        issue.pull = pull
        return Response(201, self._pull_json(issue))

    def _edit_pull(self, issue: _Issue, body: Any) -> Response:
        if not isinstance(body, dict):
            return _error(400, "Problems parsing JSON")
        if body.get("state", "open") not in ("open", "closed"):
            return _invalid_field("PullRequest", "state")
        if "title" in body:
            issue.title = body["title"]
        if "body" in body:
            issue.body = body["body"] or ""
        if "base" in body and issue.pull is not None:
            issue.pull.base = body["base"]
        if "state" in body:
            self._set_state(issue, body["state"])
        self._touch(issue)
        return Response(200, self._pull_json(issue))

    def _merge_pull(self, issue: _Issue, body: Any) -> Response:
        pull = issue.pull
        assert pull is not None
        body = body if isinstance(body, dict) else {}
        if body.get("merge_method", "merge") not in MERGE_METHODS:
            return _invalid_field("PullRequest", "merge_method")
        if issue.state != "open" or not pull.mergeable:
            return _error(405, "Pull Request is not mergeable")
        if body.get("sha") not in (None, pull.sha):
            return _error(409, "Head branch was modified. Review and try the merge again.")
        pull.merged_at = self._tick()
        pull.merge_sha = hashlib.sha1(f"merge:{pull.sha}".encode()).hexdigest()
        self._set_state(issue, "closed")
        self._touch(issue)
        if pull.base == self.default_branch:  # GitHub closes linked issues on the default branch
            for number in dict.fromkeys(int(n) for n in CLOSING_KEYWORDS.findall(issue.body)):
                closed = self._issues.get(number)
                if closed is not None and closed.pull is None and closed.state == "open":
                    self._set_state(closed, "closed", "completed")
                    self._touch(closed)
        message = "Pull Request successfully merged"
        return Response(200, {"sha": pull.merge_sha, "merged": True, "message": message})

    def _pull_of(self, number: int) -> _Pull:
        pull = self._issues[number].pull
        if pull is None:
            raise KeyError(f"#{number} is an issue, not a pull request")
        return pull

    def _open_pull_exists(self, pull: _Pull) -> bool:
        return any(
            i.state == "open"
            and i.pull is not None
            and i.pull.label.lower() == pull.label.lower()
            and i.pull.base == pull.base
            for i in self._issues.values()
        )

    def _split_head(self, head: str) -> tuple[str, str]:
        owner, sep, branch = head.partition(":")
        return (owner, branch) if sep else (self.owner, head)

    # ----- state helpers -----------------------------------------------------------------

    def _new_issue(self, title: str, body: str, user: str) -> _Issue:
        now = self._tick()
        number = next(self._numbers)
        issue = _Issue(next(self._ids), number, title, body, user, now, now)
        self._issues[number] = issue
        return issue

    def _set_state(self, issue: _Issue, state: str, reason: str | None = None) -> None:
        if state == issue.state:
            return
        issue.state = state
        issue.closed_at = self._tick() if state == "closed" else None
        issue.state_reason = (reason or "completed") if state == "closed" else "reopened"

    def _record_event(self, issue: _Issue, kind: str, label: str, actor: str | None = None) -> None:
        """A `labeled`/`unlabeled` issue event (by the token's user unless `actor` says)."""
        self._events.append({"id": next(self._ids), "kind": kind, "label": label,
                             "number": issue.number, "created_at": self._tick(),
                             "actor": actor or self.login})  # fmt: skip

    def _event_json(self, event: dict[str, Any]) -> dict[str, Any]:
        """`GET /repos/{o}/{r}/issues/events` renders the issue as it is now."""
        label = self._find_label(event["label"])
        return {
            "id": event["id"],
            "node_id": f"LE_{event['id']}",
            "url": f"{self.base_url}/repos/{self.owner}/{self.repo}/issues/events/{event['id']}",
            "actor": self._user_json(event["actor"]),
            "event": event["kind"],
            "commit_id": None,
            "commit_url": None,
            "created_at": event["created_at"],
            "label": {"name": event["label"], "color": label.color if label else "ededed"},
            "issue": self._issue_json(self._issues[event["number"]]),
        }

    def _touch(self, issue: _Issue) -> None:
        issue.updated_at = self._tick()

    def _tick(self) -> str:
        """A strictly increasing timestamp, so created/updated sorting is deterministic."""
        moment = self._epoch + timedelta(seconds=next(self._seconds))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _sorted_issues(self) -> list[_Issue]:
        return [self._issues[n] for n in sorted(self._issues)]

    def _is_our_repo(self, owner: str, repo: str) -> bool:
        return owner.lower() == self.owner.lower() and repo.lower() == self.repo.lower()

    # ----- pagination --------------------------------------------------------------------

    def _paginate(self, items: list[Any], request: Request) -> Response:
        """One page of `items` with GitHub's `Link` header (rel next/last/first/prev)."""
        per_page = min(max(_int(request.query.get("per_page"), DEFAULT_PER_PAGE), 1), MAX_PER_PAGE)
        page = max(_int(request.query.get("page"), 1), 1)
        last = max(math.ceil(len(items) / per_page), 1)
        links: list[tuple[str, int]] = []
        if page < last:
            links += [("next", page + 1), ("last", last)]
        if page > 1:
            links += [("first", 1), ("prev", page - 1)]
        headers = {}
        if links:
            url = f"{self.base_url}{request.path}"
            headers["Link"] = ", ".join(
                f'<{url}?{urlencode({**request.query, "page": str(n)})}>; rel="{rel}"'
                for rel, n in links
            )
        return Response(200, items[(page - 1) * per_page : page * per_page], headers)

    # ----- JSON renderings ---------------------------------------------------------------

    @property
    def _repo_url(self) -> str:
        return f"{self.base_url}/repos/{self.owner}/{self.repo}"

    def _user_json(self, login: str) -> dict[str, Any]:
        user_id = zlib.crc32(login.encode())
        return {
            "login": login,
            "id": user_id,
            "node_id": f"U_{user_id}",
            "type": "Organization" if login == self.owner else "User",
            "site_admin": False,
            "url": f"{self.base_url}/users/{login}",
            "html_url": f"{HTML_ROOT}/{login}",
            "avatar_url": f"{HTML_ROOT}/{login}.png",
        }

    def _repo_json(self) -> dict[str, Any]:
        full_name = f"{self.owner}/{self.repo}"
        repo_id = zlib.crc32(full_name.encode())
        open_count = sum(1 for i in self._issues.values() if i.state == "open")
        return {
            "id": repo_id,
            "node_id": f"R_{repo_id}",
            "name": self.repo,
            "full_name": full_name,
            "owner": self._user_json(self.owner),
            "private": False,
            "fork": False,
            "archived": False,
            "disabled": False,
            "url": self._repo_url,
            "html_url": f"{HTML_ROOT}/{full_name}",
            "clone_url": self.clone_url,
            "git_url": self.clone_url,
            "ssh_url": f"git@github.com:{full_name}.git",
            "default_branch": self.default_branch,
            "has_issues": True,
            "open_issues_count": open_count,
            "open_issues": open_count,
            "created_at": self._epoch.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "updated_at": self._epoch.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pushed_at": self._epoch.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "permissions": {"admin": False, "maintain": False, "push": True, "pull": True},
        }

    def _label_json(self, label: _Label) -> dict[str, Any]:
        return {
            "id": label.id,
            "node_id": f"LA_{label.id}",
            "url": f"{self._repo_url}/labels/{quote(label.name, safe='')}",
            "name": label.name,
            "color": label.color,
            "default": False,
            "description": label.description,
        }

    def _issue_labels_json(self, issue: _Issue) -> list[dict[str, Any]]:
        return [
            self._label_json(self._find_label(name) or _Label(0, name, "ededed", ""))
            for name in issue.labels
        ]

    def _issue_json(self, issue: _Issue) -> dict[str, Any]:
        url = f"{self._repo_url}/issues/{issue.number}"
        data: dict[str, Any] = {
            "id": issue.id,
            "node_id": f"I_{issue.id}",
            "number": issue.number,
            "url": url,
            "repository_url": self._repo_url,
            "labels_url": f"{url}/labels{{/name}}",
            "comments_url": f"{url}/comments",
            "events_url": f"{url}/events",
            "html_url": f"{HTML_ROOT}/{self.owner}/{self.repo}/issues/{issue.number}",
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "state_reason": issue.state_reason,
            "locked": False,
            "labels": self._issue_labels_json(issue),
            "user": self._user_json(issue.user),
            "assignee": self._user_json(issue.assignees[0]) if issue.assignees else None,
            "assignees": [self._user_json(login) for login in issue.assignees],
            "milestone": None,
            "comments": len(issue.comments),
            "created_at": issue.created_at,
            "updated_at": issue.updated_at,
            "closed_at": issue.closed_at,
            "author_association": "OWNER",
        }
        if issue.pull is not None:
            pull_url = f"{self._repo_url}/pulls/{issue.number}"
            html = f"{HTML_ROOT}/{self.owner}/{self.repo}/pull/{issue.number}"
            data["draft"] = issue.pull.draft
            data["pull_request"] = {
                "url": pull_url,
                "html_url": html,
                "diff_url": f"{html}.diff",
                "patch_url": f"{html}.patch",
                "merged_at": issue.pull.merged_at,
            }
        return data

    def _pull_json(self, issue: _Issue) -> dict[str, Any]:
        assert issue.pull is not None
        pull = issue.pull
        url = f"{self._repo_url}/pulls/{issue.number}"
        html = f"{HTML_ROOT}/{self.owner}/{self.repo}/pull/{issue.number}"
        issue_url = f"{self._repo_url}/issues/{issue.number}"
        return {
            "id": issue.id,
            "node_id": f"PR_{issue.id}",
            "number": issue.number,
            "url": url,
            "html_url": html,
            "diff_url": f"{html}.diff",
            "patch_url": f"{html}.patch",
            "issue_url": issue_url,
            "comments_url": f"{issue_url}/comments",
            "commits_url": f"{url}/commits",
            "review_comments_url": f"{url}/comments",
            "title": issue.title,
            "body": issue.body,
            "state": issue.state,
            "draft": pull.draft,
            "locked": False,
            "merged": pull.merged_at is not None,
            "mergeable": pull.mergeable if issue.state == "open" else None,
            "merged_at": pull.merged_at,
            "merge_commit_sha": pull.merge_sha,
            "user": self._user_json(issue.user),
            "labels": self._issue_labels_json(issue),
            "assignee": self._user_json(issue.assignees[0]) if issue.assignees else None,
            "assignees": [self._user_json(login) for login in issue.assignees],
            "requested_reviewers": [],
            "milestone": None,
            "head": self._ref_json(pull.head_owner, pull.head, pull.sha),
            "base": self._ref_json(self.owner, pull.base),
            "comments": len(issue.comments),
            "created_at": issue.created_at,
            "updated_at": issue.updated_at,
            "closed_at": issue.closed_at,
            "author_association": "OWNER",
        }

    def _ref_json(self, owner: str, ref: str, sha: str | None = None) -> dict[str, Any]:
        return {
            "label": f"{owner}:{ref}",
            "ref": ref,
            "sha": sha or hashlib.sha1(f"{owner}:{ref}".encode()).hexdigest(),
            "user": self._user_json(owner),
            "repo": self._repo_json() if owner.lower() == self.owner.lower() else None,
        }

    def _review_json(self, issue: _Issue, review: _Review) -> dict[str, Any]:
        html = f"{HTML_ROOT}/{self.owner}/{self.repo}/pull/{issue.number}"
        return {
            "id": review.id,
            "node_id": f"PRR_{review.id}",
            "user": self._user_json(review.user),
            "body": review.body,
            "state": review.state,
            "html_url": f"{html}#pullrequestreview-{review.id}",
            "pull_request_url": f"{self._repo_url}/pulls/{issue.number}",
            "author_association": review.association,
            "submitted_at": review.submitted_at,
            "commit_id": review.commit_id,
        }

    def _comment_json(self, issue: _Issue, comment: _Comment) -> dict[str, Any]:
        html = f"{HTML_ROOT}/{self.owner}/{self.repo}/issues/{issue.number}"
        return {
            "id": comment.id,
            "node_id": f"IC_{comment.id}",
            "url": f"{self._repo_url}/issues/comments/{comment.id}",
            "html_url": f"{html}#issuecomment-{comment.id}",
            "issue_url": f"{self._repo_url}/issues/{issue.number}",
            "body": comment.body,
            "user": self._user_json(comment.user),
            "created_at": comment.created_at,
            "updated_at": comment.created_at,
            "author_association": "OWNER",
        }


# ----- module helpers (pure functions, no state) ---------------------------------------------


def _error(status: int, message: str) -> Response:
    body = {"message": message, "documentation_url": DOCS_URL, "status": str(status)}
    return Response(status, body)


def _validation_failed(error: dict[str, Any]) -> Response:
    body = {"message": "Validation Failed", "errors": [error], "documentation_url": DOCS_URL}
    return Response(422, body)


def _missing_field(resource: str, name: str) -> Response:
    return _validation_failed({"resource": resource, "code": "missing_field", "field": name})


def _invalid_field(resource: str, name: str) -> Response:
    return _validation_failed({"resource": resource, "code": "invalid", "field": name})


def _names(labels: Any) -> list[str]:
    """Label names from a JSON list of strings or `{"name": ...}` objects."""
    items = labels if isinstance(labels, list) else []
    return [item["name"] if isinstance(item, dict) else str(item) for item in items]


def _state_matches(issue: _Issue, state: str | None) -> bool:
    wanted = state or "open"
    return wanted == "all" or issue.state == wanted


def _assignee_matches(issue: _Issue, assignee: str | None) -> bool:
    if assignee is None:
        return True
    if assignee == "none":
        return not issue.assignees
    if assignee == "*":
        return bool(issue.assignees)
    return assignee.lower() in {login.lower() for login in issue.assignees}


def _sorted(issues: list[_Issue], sort: str, direction: str) -> list[_Issue]:
    def key(issue: _Issue) -> tuple[Any, int]:
        if sort == "updated":
            return issue.updated_at, issue.number
        if sort == "comments":
            return len(issue.comments), issue.number
        return issue.created_at, issue.number

    return sorted(issues, key=key, reverse=direction != "asc")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _safe_json(request: Request) -> Any:
    try:
        return request.json()
    except ValueError:
        return None
