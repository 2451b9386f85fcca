"""The real PyGithub client against `FakeGitHub` (loopback only, no internet)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from github import (
    Auth,
    BadCredentialsException,
    Github,
    GithubException,
    RateLimitExceededException,
    UnknownObjectException,
)

from tests.fakes.github_api import FakeGitHub

TOKEN = "ghp-test-token"
Connect = Callable[..., Github]


@pytest.fixture
def gh() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN, owner="acme", repo="widgets") as fake:
        yield fake


@pytest.fixture
def connect(gh: FakeGitHub) -> Iterator[Connect]:
    """Make PyGithub clients for the fake (without PyGithub's 0.25 s / 1 s request spacing)."""
    clients: list[Github] = []

    def make(token: str = TOKEN, **kwargs: Any) -> Github:
        github_client = Github(
            base_url=gh.base_url,
            auth=Auth.Token(token),
            timeout=5,
            seconds_between_requests=None,
            seconds_between_writes=None,
            **kwargs,
        )
        clients.append(github_client)
        return github_client

    yield make
    for github_client in clients:
        github_client.close()


def issue_list_requests(gh: FakeGitHub) -> list[dict[str, str]]:
    return [r.query for r in gh.requests if r.path == "/repos/acme/widgets/issues"]


def test_repo_user_and_clone_url(gh: FakeGitHub, connect: Connect) -> None:
    gh.clone_url = "file:///tmp/widgets.git"
    g = connect()
    repo = g.get_repo("acme/widgets")
    assert (repo.full_name, repo.owner.login) == ("acme/widgets", "acme")
    assert repo.default_branch == "main"
    assert repo.clone_url == "file:///tmp/widgets.git"
    assert g.get_user().login == "fleet-bot"
    assert all(r.token_ok and r.auth_scheme == "token" for r in gh.requests)


def test_lists_ready_issues_across_three_pages(gh: FakeGitHub, connect: Connect) -> None:
    ready = [gh.add_issue(f"task {i}", "do it", ["ready-for-dev"]) for i in range(7)]
    both = gh.add_issue("bug task", "", ["ready-for-dev", "bug"])
    gh.add_issue("other", "", ["question"])
    gh.add_issue("done", "", ["ready-for-dev"], state="closed")
    repo = connect(per_page=3).get_repo("acme/widgets")

    issues = repo.get_issues(state="open", labels=["ready-for-dev"], direction="asc")

    assert [i.number for i in issues] == [*ready, both]
    pages = issue_list_requests(gh)
    assert [q.get("page", "1") for q in pages] == ["1", "2", "3"]
    assert all(q["per_page"] == "3" and q["labels"] == "ready-for-dev" for q in pages)
    tagged = repo.get_issues(labels=["ready-for-dev", "bug"])  # AND semantics
    assert [i.number for i in tagged] == [both]


def test_issue_list_defaults_and_includes_pulls(gh: FakeGitHub, connect: Connect) -> None:
    first = gh.add_issue("first")
    pull = gh.add_pull("feature-1", "a PR")
    gh.add_issue("closed", state="closed")
    issues = list(connect().get_repo("acme/widgets").get_issues())
    assert [i.number for i in issues] == [pull, first]
    assert issues[0].pull_request is not None and issues[1].pull_request is None


def test_labels_add_remove_and_missing_label_404(gh: FakeGitHub, connect: Connect) -> None:
    number = gh.add_issue("task", labels=["ready-for-dev"])
    repo = connect().get_repo("acme/widgets")
    issue = repo.get_issue(number)

    issue.add_to_labels("in-progress")
    issue.remove_from_labels("ready-for-dev")

    assert gh.label_names(number) == ["in-progress"]
    assert [label.name for label in issue.get_labels()] == ["in-progress"]
    assert "in-progress" in gh.labels  # unknown labels are created on the repo, like GitHub
    with pytest.raises(GithubException) as missing:
        issue.remove_from_labels("ready-for-dev")
    assert missing.value.status == 404
    with pytest.raises(UnknownObjectException):
        repo.get_label("no-such-label")


def test_repo_labels_create_and_get(gh: FakeGitHub, connect: Connect) -> None:
    gh.add_label("ready-for-dev", color="0e8a16")
    repo = connect().get_repo("acme/widgets")
    repo.create_label("needs human", "d93f0b", "escalated")
    assert repo.get_label("needs human").description == "escalated"
    assert {label.name: label.color for label in repo.get_labels()} == {
        "ready-for-dev": "0e8a16",
        "needs human": "d93f0b",
    }


def test_comment_and_edit_issue(gh: FakeGitHub, connect: Connect) -> None:
    number = gh.add_issue("task", "body", ["ready-for-dev"])
    issue = connect().get_repo("acme/widgets").get_issue(number)

    comment = issue.create_comment("Working on it")
    issue.edit(state="closed", labels=["done"], assignees=["fleet-bot"], title="task (done)")

    assert comment.body == "Working on it" and comment.user.login == "fleet-bot"
    assert gh.comments == {number: ["Working on it"]}
    assert [c.body for c in issue.get_comments()] == ["Working on it"]
    stored = gh.issue(number)
    assert (stored["state"], stored["title"], stored["comments"]) == ("closed", "task (done)", 1)
    assert [label["name"] for label in stored["labels"]] == ["done"]
    assert [user["login"] for user in stored["assignees"]] == ["fleet-bot"]
    assert issue.state == "closed" and issue.closed_at is not None


def test_create_pull_then_duplicate_is_422(gh: FakeGitHub, connect: Connect) -> None:
    repo = connect().get_repo("acme/widgets")
    gh.add_issue("an issue")  # issues and pulls share one number sequence

    pr = repo.create_pull(base="main", head="agent/issue-1", title="Fix #1", body="B", draft=True)

    assert (pr.number, pr.state, pr.draft, pr.head.ref) == (2, "open", True, "agent/issue-1")
    assert pr.html_url == "https://github.com/acme/widgets/pull/2"
    with pytest.raises(GithubException) as duplicate:
        repo.create_pull(base="main", head="agent/issue-1", title="again")
    assert duplicate.value.status == 422
    assert "A pull request already exists for acme:agent/issue-1" in str(duplicate.value)
    assert len(gh.pulls) == 1


def test_edit_pull_and_reopen_after_close(gh: FakeGitHub, connect: Connect) -> None:
    repo = connect().get_repo("acme/widgets")
    pr = repo.create_pull(base="main", head="feature", title="old", body="old body")
    pr.edit(title="new", body="new body", state="closed")
    again = repo.create_pull(base="main", head="feature", title="second try")
    fetched = repo.get_pull(pr.number)
    assert (fetched.title, fetched.body, fetched.state) == ("new", "new body", "closed")
    assert again.number == pr.number + 1


def test_get_pulls_filters_head_only_with_owner(gh: FakeGitHub, connect: Connect) -> None:
    one = gh.add_pull("branch", "first")
    two = gh.add_pull("other", "second")
    repo = connect().get_repo("acme/widgets")
    assert [p.number for p in repo.get_pulls(head="acme:branch")] == [one]
    assert sorted(p.number for p in repo.get_pulls(head="branch")) == [one, two]  # GitHub quirk
    assert [p.number for p in repo.get_pulls(state="open", base="main")] == [two, one]


def test_default_retry_absorbs_a_502(gh: FakeGitHub, connect: Connect) -> None:
    gh.fail_next(1, 502)
    repo = connect().get_repo("acme/widgets")  # PyGithub's default GithubRetry
    assert repo.name == "widgets"
    assert [r.status for r in gh.requests] == [502, 200]


def test_without_retry_a_502_raises(gh: FakeGitHub, connect: Connect) -> None:
    gh.fail_next(1, 502)
    with pytest.raises(GithubException) as error:
        connect(retry=None).get_repo("acme/widgets")
    assert error.value.status == 502


def test_without_retry_a_rate_limit_raises(gh: FakeGitHub, connect: Connect) -> None:
    gh.rate_limit_next(1, reset_in_seconds=120)
    with pytest.raises(RateLimitExceededException) as error:
        connect(retry=None).get_repo("acme/widgets")
    headers = error.value.headers or {}
    assert error.value.status == 403 and headers["x-ratelimit-remaining"] == "0"
    assert int(headers["x-ratelimit-reset"]) >= int(time.time()) + 100


def test_default_retry_waits_out_a_rate_limit(gh: FakeGitHub, connect: Connect) -> None:
    gh.rate_limit_next(1, reset_in_seconds=-2)  # reset in the past: GithubRetry retries at once
    started = time.monotonic()
    assert connect().get_repo("acme/widgets").name == "widgets"
    assert time.monotonic() - started < 2
    assert [r.status for r in gh.requests] == [403, 200]


def test_wrong_token_is_bad_credentials(gh: FakeGitHub, connect: Connect) -> None:
    with pytest.raises(BadCredentialsException) as error:
        connect(token="wrong", retry=None).get_repo("acme/widgets")
    assert error.value.status == 401
    assert [(r.auth_scheme, r.token_ok) for r in gh.requests] == [("token", False)]


def test_bearer_token_is_accepted_and_missing_auth_is_401(gh: FakeGitHub) -> None:
    request = urllib.request.Request(
        f"{gh.base_url}/user", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response)["login"] == "fleet-bot"
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{gh.base_url}/user", timeout=5)
    with error.value:
        assert error.value.code == 401
        assert json.load(error.value)["message"] == "Bad credentials"
