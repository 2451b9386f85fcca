"""Auto-merge on approval: the fleet's approved pull requests are merged and their issues closed;
anything else is left alone. GitHubTracker through the real PyGithub against FakeGitHub, and
LocalTracker's JSON store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from github import Auth, Github

from flows.fleet.config import FleetConfig
from flows.fleet.flow import merge_approved_pulls
from flows.fleet.github_tracker import GitHubTracker
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.merge import MergeResult, merge_approved
from flows.fleet.models import Issue, branch_name
from flows.fleet.tracker import Tracker, TrackerError, closing_references, issue_of_branch
from tests.conftest import GITHUB_TOKEN as TOKEN
from tests.conftest import LABELS
from tests.fakes.github_api import FakeGitHub

PULLS = "/repos/acme/widgets/pulls"


@pytest.fixture
def tracker(gh: FakeGitHub) -> Iterator[GitHubTracker]:
    client = Github(
        base_url=gh.base_url,
        auth=Auth.Token(gh.token),
        timeout=5,
        retry=None,
        seconds_between_requests=None,
        seconds_between_writes=None,
    )
    yield GitHubTracker.connect(client, "acme/widgets", LABELS)
    client.close()


def fleet_pull(gh: FakeGitHub, title: str = "task", label: str = LABELS.review) -> tuple[int, int]:
    """An issue the fleet finished (review label) and its pull request, as the worker opens it."""
    issue = gh.add_issue(title, "do it", [label])
    pull = gh.add_pull(branch_name(issue), title, f"Closes #{issue}\n\n## What changed")
    return issue, pull


def outcome(results: list[MergeResult]) -> dict[int, tuple[bool, str]]:
    return {r.pull: (r.merged, r.reason) for r in results}


def merge_calls(gh: FakeGitHub) -> list[str]:
    return [r.path for r in gh.requests if r.method == "PUT" and r.path.endswith("/merge")]


# ----- GitHubTracker -----------------------------------------------------------------------------


def test_an_approved_pull_is_merged_and_github_closes_its_issue(
    gh: FakeGitHub, tracker: GitHubTracker
) -> None:
    issue, pull = fleet_pull(gh)
    gh.add_review(pull, "alice", "COMMENTED")
    gh.add_review(pull, "alice", "APPROVED")
    gh.add_review(pull, "alice", "COMMENTED")  # a later comment does not undo the approval
    seen = len(gh.requests)

    results = merge_approved(tracker, enabled=True)

    assert results == [
        MergeResult(
            pull=pull,
            issue=issue,
            url=f"https://github.com/acme/widgets/pull/{pull}",
            merged=True,
            reason="merged",
            approved_by=["alice"],
        )
    ]
    assert gh.pull(pull)["merged"] and gh.pull(pull)["state"] == "closed"
    assert gh.issue(issue)["state"] == "closed"  # by GitHub, through "Closes #N"
    requests = gh.requests[seen:]
    # two listings, the reviews of the one candidate, the merge: no GET per pull or issue
    assert [(r.method, r.path) for r in requests] == [
        ("GET", "/repos/acme/widgets/issues"),
        ("GET", PULLS),
        ("GET", f"{PULLS}/{pull}/reviews"),
        ("PUT", f"{PULLS}/{pull}/merge"),
    ]
    assert requests[0].query["labels"] == LABELS.review
    assert requests[1].query["base"] == "main"
    assert requests[3].body == {"merge_method": "squash", "sha": gh.pull(pull)["head"]["sha"]}
    assert merge_approved(tracker, enabled=True) == []  # nothing left to merge


def test_unapproved_and_changes_requested_pulls_are_left_alone(
    gh: FakeGitHub, tracker: GitHubTracker
) -> None:
    _, waiting = fleet_pull(gh, "no review")
    _, commented = fleet_pull(gh, "only comments")
    gh.add_review(commented, "alice", "COMMENTED")
    _, revoked = fleet_pull(gh, "approved, then changes requested")
    gh.add_review(revoked, "alice", "APPROVED")
    gh.add_review(revoked, "alice", "CHANGES_REQUESTED")
    _, split = fleet_pull(gh, "one approves, another requests changes")
    gh.add_review(split, "alice", "APPROVED")
    gh.add_review(split, "bob", "CHANGES_REQUESTED")
    _, dismissed = fleet_pull(gh, "approval dismissed")
    gh.add_review(dismissed, "alice", "APPROVED")
    gh.add_review(dismissed, "alice", "DISMISSED")
    _, stale = fleet_pull(gh, "approved before the last push")
    gh.add_review(stale, "alice", "APPROVED")
    gh.push(stale)

    assert outcome(merge_approved(tracker, enabled=True)) == {
        waiting: (False, "awaiting approval"),
        commented: (False, "awaiting approval"),
        revoked: (False, "changes requested by alice"),
        split: (False, "changes requested by bob"),
        dismissed: (False, "awaiting approval"),
        stale: (False, "awaiting approval of the latest commit"),
    }
    assert merge_calls(gh) == []
    assert all(gh.pull(n)["state"] == "open" for n in (waiting, revoked, split, stale))
    assert all(issue["state"] == "open" for issue in gh.issues)


def test_approval_after_changes_requested_merges(gh: FakeGitHub, tracker: GitHubTracker) -> None:
    _, pull = fleet_pull(gh)
    gh.add_review(pull, "alice", "CHANGES_REQUESTED")
    gh.add_review(pull, "alice", "APPROVED")
    assert outcome(merge_approved(tracker, enabled=True)) == {pull: (True, "merged")}


def test_an_unmergeable_pull_is_reported_and_the_others_merge(
    gh: FakeGitHub, tracker: GitHubTracker
) -> None:
    conflict_issue, conflict = fleet_pull(gh, "conflicts")
    _, fine = fleet_pull(gh, "fine")
    for pull in (conflict, fine):
        gh.add_review(pull, "alice", "APPROVED")
    gh.set_mergeable(conflict, False)

    results = outcome(merge_approved(tracker, enabled=True))

    assert results[fine] == (True, "merged")
    merged, reason = results[conflict]
    assert not merged
    assert reason == (
        f"not merged: merge pull request acme/widgets#{conflict}: "
        "GitHub answered 405 Pull Request is not mergeable"
    )
    assert gh.pull(conflict)["state"] == "open" and not gh.pull(conflict)["merged"]
    assert gh.issue(conflict_issue)["state"] == "open"
    assert TOKEN not in reason


def test_a_head_moved_after_review_is_not_merged(gh: FakeGitHub, tracker: GitHubTracker) -> None:
    _, pull = fleet_pull(gh)
    gh.add_review(pull, "alice", "APPROVED")
    (candidate,) = tracker.review_pulls()
    gh.push(pull)  # new, unreviewed code lands between the listing and the merge
    with pytest.raises(TrackerError, match="409 Head branch was modified"):
        tracker.merge(candidate)
    assert gh.pull(pull)["state"] == "open"


def test_pulls_the_fleet_did_not_open_are_never_merged(
    gh: FakeGitHub, tracker: GitHubTracker
) -> None:
    in_review = gh.add_issue("in review", "", [LABELS.review])
    working = gh.add_issue("still in progress", "", [LABELS.in_progress])
    closed = gh.add_issue("closed", "", [LABELS.review], state="closed")
    others = [
        gh.add_pull("feature/mine", "a person's branch", f"Closes #{in_review}"),
        gh.add_pull(f"evil:{branch_name(in_review)}", "from a fork", f"Closes #{in_review}"),
        gh.add_pull(f"ai-feature/issue-0{in_review}", "not a fleet name", f"Closes #{in_review}"),
        gh.add_pull(branch_name(in_review), "into another base", "", base="release"),
        gh.add_pull(branch_name(working), "issue not in review", f"Closes #{working}"),
        gh.add_pull(branch_name(closed), "issue closed", f"Closes #{closed}"),
    ]
    for pull in others:
        gh.add_review(pull, "alice", "APPROVED")

    assert merge_approved(tracker, enabled=True) == []
    assert merge_calls(gh) == []
    assert all(gh.pull(pull)["state"] == "open" for pull in others)


def test_disabled_does_nothing_at_all(gh: FakeGitHub, tracker: GitHubTracker) -> None:
    _, pull = fleet_pull(gh)
    gh.add_review(pull, "alice", "APPROVED")
    seen = len(gh.requests)
    assert merge_approved(tracker, enabled=False) == []
    assert gh.requests[seen:] == []
    assert gh.pull(pull)["state"] == "open"


def test_no_issue_in_review_costs_one_request(gh: FakeGitHub, tracker: GitHubTracker) -> None:
    gh.add_pull("feature/x")
    seen = len(gh.requests)
    assert merge_approved(tracker, enabled=True) == []
    assert [r.path for r in gh.requests[seen:]] == ["/repos/acme/widgets/issues"]


# ----- LocalTracker ------------------------------------------------------------------------------


def local_store(tmp_path: Path) -> LocalTracker:
    return LocalTracker.create(tmp_path / "tracker.json", [], LABELS)


def local_fleet_pull(store: LocalTracker, title: str = "task") -> tuple[Issue, int]:
    """An issue taken through claim -> pull request -> review label, as a worker does."""
    issue = store.add_issue(title)
    assert store.claim(issue, "w1")
    pull = store.open_pull_request(issue, issue.branch, title, f"Closes #{issue.number}")
    store.finish(issue, True, f"Pull request: {pull.url}")
    return issue, pull.number


def test_local_approved_pull_is_merged_and_its_issue_closed(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    tracker: Tracker = store
    issue, pull = local_fleet_pull(store)
    waiting_issue, waiting = local_fleet_pull(store, "waiting")
    store.add_review(pull, "alice")

    assert outcome(merge_approved(tracker, enabled=True)) == {
        pull: (True, "merged"),
        waiting: (False, "awaiting approval"),
    }
    merged = {p.number: p.state for p in store.pulls()}
    assert merged == {pull: "merged", waiting: "open"}
    assert store.state_of(issue.number) == "closed"
    closing = f"Closed by pull request #{pull} (local://pulls/{pull})"
    assert store.comments(issue.number)[-1] == closing
    assert store.state_of(waiting_issue.number) == "open"
    assert outcome(merge_approved(tracker, enabled=True)) == {waiting: (False, "awaiting approval")}


def test_local_changes_requested_unmergeable_and_disabled(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    _, revoked = local_fleet_pull(store, "revoked")
    store.add_review(revoked, "alice")
    store.add_review(revoked, "alice", "CHANGES_REQUESTED")
    conflict_issue, conflict = local_fleet_pull(store, "conflict")
    store.add_review(conflict, "bob")
    store.set_mergeable(conflict, False)

    assert merge_approved(store, enabled=False) == []
    assert outcome(merge_approved(store, enabled=True)) == {
        revoked: (False, "changes requested by alice"),
        conflict: (
            False,
            f"not merged: merge pull request #{conflict}: "
            "not mergeable (conflicts with the base branch)",
        ),
    }
    assert all(p.state == "open" for p in store.pulls())
    assert store.state_of(conflict_issue.number) == "open"


def test_local_pulls_the_fleet_did_not_open_are_never_merged(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    issue = store.add_issue("in review", labels=[LABELS.review])
    other = store.open_pull_request(issue, "feature/mine", "mine", f"Closes #{issue.number}")
    working = store.add_issue("in progress", labels=[LABELS.in_progress])
    early = store.open_pull_request(working, working.branch, "early", "")
    for pull in (other, early):
        store.add_review(pull.number, "alice")
    assert merge_approved(store, enabled=True) == []
    assert all(p.state == "open" for p in store.pulls())


def test_local_reopening_after_a_merge_opens_a_new_pull(tmp_path: Path) -> None:
    store = local_store(tmp_path)
    issue, pull = local_fleet_pull(store)
    store.add_review(pull, "alice")
    merge_approved(store, enabled=True)
    again = store.open_pull_request(issue, issue.branch, "again", "")
    assert again.created and again.number != pull


# ----- helpers -----------------------------------------------------------------------------------


def test_fleet_branches_and_closing_keywords() -> None:
    assert issue_of_branch("ai-feature/issue-12") == 12
    for branch in ("ai-feature/issue-012", "ai-feature/issue-0", "ai-feature/issue-1x",
                   "feature/issue-1", "ai-feature/issue-1/x", "xai-feature/issue-1"):  # fmt: skip
        assert issue_of_branch(branch) is None
    body = "Closes #3, fixes: #4 and Resolved #3.\nSee #5; reclosed #6; closes#7"
    assert closing_references(body) == [3, 4]


def test_approvals_of_outsiders_do_not_count(gh: FakeGitHub, tracker: GitHubTracker) -> None:
    """On a public repository anyone may approve: only owners, members and collaborators."""
    _, pull = fleet_pull(gh)
    gh.add_review(pull, "stranger", "APPROVED", association="NONE")
    gh.add_review(pull, "drive-by", "APPROVED", association="CONTRIBUTOR")
    (result,) = merge_approved(tracker, enabled=True)
    assert not result.merged and result.reason.startswith("awaiting approval")
    gh.add_review(pull, "maintainer", "APPROVED", association="COLLABORATOR")
    (result,) = merge_approved(tracker, enabled=True)
    assert result.merged and result.approved_by == ["maintainer"]


def test_a_poll_goes_on_when_the_candidates_cannot_be_listed(
    gh: FakeGitHub, tracker: GitHubTracker, caplog: pytest.LogCaptureFixture
) -> None:
    """GitHub stumbling while auto-merge lists approved pull requests costs this poll its
    merges (the next poll does them), not its issues."""
    fleet_pull(gh)
    connection = SimpleNamespace(
        tracker=tracker, settings=FleetConfig(auto_merge_on_approval=True), name="acme/widgets"
    )
    gh.fail_next(50)
    merges = merge_approved_pulls(connection)  # type: ignore[arg-type]
    assert merges == []
    assert "auto-merge skipped this poll" in caplog.text
