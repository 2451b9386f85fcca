"""The issue tracker: GitHubTracker through the real PyGithub against the loopback FakeGitHub,
and LocalTracker's JSON store, including two processes racing on one store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from github import Auth, Github

import flows.fleet.github_tracker as github_tracker_module
from flows.fleet.github_tracker import GitHubTracker
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.models import Issue
from flows.fleet.testbed import generate_mock_issues
from flows.fleet.tracker import Tracker, TrackerError, requeue_interrupted_claims
from tests.conftest import GITHUB_TOKEN as TOKEN
from tests.conftest import LABELS
from tests.fakes import Request, Response
from tests.fakes.github_api import FakeGitHub

REPO_ROOT = Path(__file__).resolve().parent.parent
Connect = Callable[..., GitHubTracker]


@pytest.fixture
def clients() -> Iterator[list[Github]]:
    made: list[Github] = []
    yield made
    for client in made:
        client.close()


def make_client(fake: FakeGitHub, made: list[Github], **kwargs: Any) -> Github:
    """The real client, without PyGithub's 0.25 s / 1 s spacing between requests."""
    kwargs.setdefault("auth", Auth.Token(fake.token))
    client = Github(
        base_url=fake.base_url,
        timeout=5,
        seconds_between_requests=None,
        seconds_between_writes=None,
        **kwargs,
    )
    made.append(client)
    return client


@pytest.fixture
def connect(gh: FakeGitHub, clients: list[Github]) -> Connect:
    def make(**kwargs: Any) -> GitHubTracker:
        return GitHubTracker.connect(make_client(gh, clients, **kwargs), "acme/widgets", LABELS)

    return make


def ready_issue(fake: FakeGitHub, title: str = "task") -> Issue:
    number = fake.add_issue(title, "do it", [LABELS.ready])
    return Issue(number=number, title=title, labels=(LABELS.ready,))


# ----- GitHubTracker -----------------------------------------------------------------------------


def test_connect_takes_clone_url_and_branch_from_the_api(gh: FakeGitHub, connect: Connect) -> None:
    gh.clone_url = "file:///srv/git/widgets.git"
    gh.default_branch = "trunk"
    tracker: Tracker = connect()
    assert isinstance(tracker, GitHubTracker)
    assert (tracker.clone_url, tracker.default_branch) == ("file:///srv/git/widgets.git", "trunk")
    assert repr(tracker) == "GitHubTracker('acme/widgets')"


def test_list_ready_pages_oldest_first_without_pulls_or_unlabelled(
    gh: FakeGitHub, clients: list[Github]
) -> None:
    ready = [
        gh.add_issue(f"task {i}", "", [LABELS.ready, f"priority:{i % 3 + 1}"]) for i in range(7)
    ]
    gh.add_issue("question", "", ["question"])
    gh.add_issue("done", "", [LABELS.ready], state="closed")
    pull = gh.add_pull("some-branch", "a PR")
    client = make_client(gh, clients, per_page=3)
    client.get_repo("acme/widgets").get_issue(pull).add_to_labels(LABELS.ready)  # a ready PR
    newest = gh.add_issue("newest", "", [LABELS.ready])
    tracker = GitHubTracker.connect(client, "acme/widgets", LABELS)
    seen = len(gh.requests)

    issues = tracker.list_ready()

    assert [i.number for i in issues] == [*ready, newest]
    assert issues[0].title == "task 0" and issues[0].labels == (LABELS.ready, "priority:1")
    assert issues[0].url == f"https://github.com/acme/widgets/issues/{ready[0]}"
    requests = gh.requests[seen:]
    assert all(r.path == "/repos/acme/widgets/issues" for r in requests)  # no GET per issue
    assert [r.query.get("page", "1") for r in requests] == ["1", "2", "3"]
    assert all(r.query["sort"] == "created" and r.query["direction"] == "asc" for r in requests)
    assert all(r.query["labels"] == LABELS.ready and r.query["state"] == "open" for r in requests)


def test_claim_wins_once(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    tracker = connect()

    assert tracker.claim(issue, "fleet-a/worker-1") is True
    assert tracker.claim(issue, "fleet-b/worker-7") is False

    assert gh.label_names(issue.number) == [LABELS.in_progress]
    assert gh.comments == {issue.number: ["Claimed by fleet-a/worker-1"]}
    assert tracker.list_ready() == []


def test_concurrent_claims_have_exactly_one_winner(gh: FakeGitHub, connect: Connect) -> None:
    issues = [ready_issue(gh, f"task {i}") for i in range(5)]
    tracker = connect()
    threads = 4
    barrier = threading.Barrier(threads)
    wins: dict[int, list[str]] = {issue.number: [] for issue in issues}
    lock = threading.Lock()

    def worker(name: str) -> None:
        barrier.wait()
        for issue in issues:
            if tracker.claim(issue, name):
                with lock:
                    wins[issue.number].append(name)

    pool = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(10)

    assert all(len(winners) == 1 for winners in wins.values()), wins
    for issue in issues:
        assert gh.comments[issue.number] == [f"Claimed by {wins[issue.number][0]}"]
        assert gh.label_names(issue.number) == [LABELS.in_progress]


def test_release_makes_the_issue_ready_again(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    tracker = connect()
    assert tracker.claim(issue, "w1")

    tracker.release(issue, "the workspace could not be created")

    assert gh.label_names(issue.number) == [LABELS.ready]
    assert gh.comments[issue.number][-1] == "Released: the workspace could not be created"
    assert [i.number for i in tracker.list_ready()] == [issue.number]
    assert tracker.claim(issue, "w2") is True


def test_last_claim_names_the_latest_claimant(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    tracker = connect()
    assert tracker.last_claim(issue.number) is None
    assert tracker.claim(issue, "host:1 flow-run aaa/worker-1")
    tracker.release(issue, "its run crashed")
    assert tracker.claim(tracker.get(issue.number), "host:2 flow-run bbb/worker-2")
    assert tracker.last_claim(issue.number) == "host:2 flow-run bbb/worker-2"


def test_finish_ok_and_failed(gh: FakeGitHub, connect: Connect) -> None:
    good, bad = ready_issue(gh, "good"), ready_issue(gh, "bad")
    tracker = connect()
    assert tracker.claim(good, "w1") and tracker.claim(bad, "w2")

    tracker.finish(good, True, "")
    tracker.finish(bad, False, "The agent ran out of turns.")

    assert gh.label_names(good.number) == [LABELS.review]
    assert gh.comments[good.number] == ["Claimed by w1"]
    assert gh.label_names(bad.number) == [LABELS.failed]
    assert gh.comments[bad.number] == ["Claimed by w2", "The agent ran out of turns."]


def test_open_pull_request_is_idempotent(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    tracker = connect()

    first = tracker.open_pull_request(issue, issue.branch, "Fix #1", "first body")
    second = tracker.open_pull_request(issue, issue.branch, "Fix #1 (v2)", "second body")

    assert first.created is True and second.created is False
    assert (second.number, second.url, second.branch) == (first.number, first.url, issue.branch)
    assert first.url == f"https://github.com/acme/widgets/pull/{first.number}"
    [pull] = gh.pulls
    assert (pull["title"], pull["body"], pull["base"]["ref"]) == (
        "Fix #1 (v2)",
        "second body",
        "main",
    )
    lookups = [r for r in gh.requests if r.method == "GET" and r.path.endswith("/pulls")]
    assert [r.query["head"] for r in lookups] == [f"acme:{issue.branch}"] * 2


def test_open_pull_request_finds_a_pull_made_elsewhere(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    existing = gh.add_pull(issue.branch, "by hand")
    gh.add_pull("unrelated", "newer PR")  # listed first if the head filter lacked the owner

    pull = connect().open_pull_request(issue, issue.branch, "Fix it", "body")

    assert (pull.number, pull.created) == (existing, False)
    assert gh.issue(existing)["title"] == "Fix it"
    assert len(gh.pulls) == 2


class RacingGitHub(FakeGitHub):
    """Another creator opens the same pull request right after our first lookup found none."""

    raced = False

    def handle(self, request: Request) -> Response:
        response = super().handle(request)
        if request.method == "GET" and request.path.endswith("/pulls") and not self.raced:
            self.raced = True
            self.add_pull(request.query["head"], "theirs", "their body")
        return response


def test_open_pull_request_race_returns_the_existing_one(clients: list[Github]) -> None:
    with RacingGitHub(token=TOKEN) as fake:
        for name in LABELS.names():
            fake.add_label(name)
        issue = ready_issue(fake)
        tracker = GitHubTracker.connect(make_client(fake, clients), "acme/widgets", LABELS)

        pull = tracker.open_pull_request(issue, issue.branch, "ours", "our body")

        assert pull.created is False
        assert [p["number"] for p in fake.pulls] == [pull.number]
        assert fake.pulls[0]["title"] == "ours"
        creates = [r.status for r in fake.requests if r.method == "POST" and "pulls" in r.path]
        assert creates == [422]


def test_transient_errors_are_absorbed_by_pygithub_retry(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    gh.fail_next(1, 502)
    tracker = connect()
    gh.fail_next(1, 502)
    assert tracker.claim(issue, "w1") is True
    gh.rate_limit_next(1, reset_in_seconds=-2)  # reset already passed: retried at once
    assert tracker.list_ready() == []
    statuses = [r.status for r in gh.requests]
    assert statuses[:2] == [502, 200] and statuses.count(502) == 2 and 403 in statuses
    assert gh.label_names(issue.number) == [LABELS.in_progress]


def test_missing_repo_label_is_a_clear_error_at_connect(
    clients: list[Github],
) -> None:
    with FakeGitHub(token=TOKEN) as fake:
        fake.add_label(LABELS.in_progress)
        fake.add_label(LABELS.review)
        with pytest.raises(TrackerError) as error:
            GitHubTracker.connect(make_client(fake, clients), "acme/widgets", LABELS)
    message = str(error.value)
    assert message.startswith("repository acme/widgets has no label 'ready-for-dev', 'ai-failed'")


def test_unknown_repo_is_a_clear_error(gh: FakeGitHub, clients: list[Github]) -> None:
    with pytest.raises(TrackerError, match=r"^open repository acme/nope: GitHub answered 404"):
        GitHubTracker.connect(make_client(gh, clients), "acme/nope", LABELS)


def test_errors_name_the_operation_and_never_the_token(
    gh: FakeGitHub, connect: Connect, clients: list[Github]
) -> None:
    issue = ready_issue(gh)
    tracker = connect(retry=None)
    gh.fail_next(1, 500)
    with pytest.raises(TrackerError) as failed:
        tracker.claim(issue, "w1")
    with pytest.raises(TrackerError) as rejected:
        GitHubTracker.connect(
            make_client(gh, clients, auth=Auth.Token("ghp-wrong-" + TOKEN), retry=None),
            "acme/widgets",
            LABELS,
        )

    assert str(failed.value) == "claim acme/widgets#1: GitHub answered 500 Internal Server Error"
    assert (
        str(rejected.value) == "open repository acme/widgets: GitHub answered 401 Bad credentials"
    )
    for error in (failed.value, rejected.value):
        shown = " ".join([str(error), repr(error), str(error.__cause__), repr(error.__cause__)])
        assert TOKEN not in shown
    assert TOKEN not in repr(tracker)
    assert gh.label_names(issue.number) == [LABELS.ready]  # nothing half done


def test_a_claim_whose_reply_was_lost_goes_back_to_the_queue(clients: list[Github]) -> None:
    """GitHub removed the ready label, but the reply was lost: PyGithub retried, got 404 and
    the claim looked lost to another worker. No state label, no claim: a later sweep gives
    the issue back, and only that one."""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)  # the fake's events are that old
    with FakeGitHub(token=TOKEN, owner="acme", repo="widgets",
                    clock_start=an_hour_ago) as fake:  # fmt: skip
        for name in LABELS.names():
            fake.add_label(name)
        tracker = GitHubTracker.connect(make_client(fake, clients), "acme/widgets", LABELS)
        lost, claimed, unreadied = (ready_issue(fake, title) for title in ("a", "b", "c"))
        assert tracker.claim(claimed, "fleet-a/worker-01")
        fake.unlabel(claimed.number, LABELS.in_progress, actor="a-human")  # after the claim
        fake.unlabel(unreadied.number, LABELS.ready, actor="a-human")  # not ready after all
        fake.lose_next_reply()
        assert tracker.claim(lost, "fleet-a/worker-02") is False
        assert fake.label_names(lost.number) == []  # stranded: nobody will ever take it

        assert tracker.interrupted_claims(older_than_s=2 * 3600) == []  # not old enough yet
        assert [i.number for i in tracker.interrupted_claims(older_than_s=0)] == [lost.number]
        assert requeue_interrupted_claims(tracker, older_than_s=0) == [lost.number]
        assert fake.label_names(lost.number) == [LABELS.ready]
        assert "interrupted" in fake.comments[lost.number][-1]
        assert requeue_interrupted_claims(tracker, older_than_s=0) == []  # ready again
        assert tracker.claim(lost, "fleet-a/worker-02")


def test_the_sweep_reads_events_back_to_its_horizon_not_a_fixed_count(
    clients: list[Github], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost claim under 350 later events (a busy repository, or a large fleet's own label
    changes) is still found; events older than the horizon are not read at all."""
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with FakeGitHub(token=TOKEN, owner="acme", repo="widgets",
                    clock_start=an_hour_ago) as fake:  # fmt: skip
        for name in LABELS.names():
            fake.add_label(name)
        tracker = GitHubTracker.connect(make_client(fake, clients), "acme/widgets", LABELS)
        lost, busy = ready_issue(fake, "lost"), ready_issue(fake, "busy")
        fake.lose_next_reply()
        assert tracker.claim(lost, "fleet-a/worker-01") is False
        for _ in range(350):  # each a second later than the one before
            fake.unlabel(busy.number, "triage", actor="a-bot")
        assert [i.number for i in tracker.interrupted_claims(older_than_s=0)] == [lost.number]
        # a horizon 3 minutes after the claim: the sweep stops at the first older event
        monkeypatch.setattr(github_tracker_module, "EVENTS_HORIZON_S", 3600 - 180.0)
        assert tracker.interrupted_claims(older_than_s=0) == []


def test_a_failed_claim_step_gives_the_issue_back(gh: FakeGitHub, connect: Connect) -> None:
    issue = ready_issue(gh)
    tracker = connect(retry=None)
    original = FakeGitHub.handle
    fail_comments = {"on": True}

    def handle(self: FakeGitHub, request: Request) -> Response:
        if fail_comments["on"] and request.method == "POST" and request.path.endswith("comments"):
            fail_comments["on"] = False
            return Response(500, {"message": "Internal Server Error"})
        return original(self, request)

    gh.handle = handle.__get__(gh)  # type: ignore[method-assign]
    with pytest.raises(TrackerError, match="claim acme/widgets#1"):
        tracker.claim(issue, "w1")
    assert gh.label_names(issue.number) == [LABELS.ready]


def fail_comments_once(gh: FakeGitHub, status: int = 403) -> None:
    """The next comment POST is answered `status` (e.g. a locked issue), then all is well."""
    original = FakeGitHub.handle
    armed = {"on": True}

    def handle(self: FakeGitHub, request: Request) -> Response:
        if armed["on"] and request.method == "POST" and request.path.endswith("comments"):
            armed["on"] = False
            return Response(status, {"message": "Forbidden"})
        return original(self, request)

    gh.handle = handle.__get__(gh)  # type: ignore[method-assign]


def test_a_failed_release_leaves_the_issue_claimed_not_unlabelled(
    gh: FakeGitHub, connect: Connect
) -> None:
    """With no state label nothing would ever pick the issue up again; in-progress, a
    sweep can release it later."""
    issue = ready_issue(gh)
    tracker = connect(retry=None)
    assert tracker.claim(issue, "w1")
    fail_comments_once(gh)
    with pytest.raises(TrackerError, match="release acme/widgets#1"):
        tracker.release(issue, "its run crashed")
    assert gh.label_names(issue.number) == [LABELS.in_progress]
    tracker.release(issue, "its run crashed")
    assert gh.label_names(issue.number) == [LABELS.ready]


def test_a_success_whose_comment_failed_then_failed_has_one_outcome(
    gh: FakeGitHub, connect: Connect
) -> None:
    issue = ready_issue(gh)
    tracker = connect(retry=None)
    assert tracker.claim(issue, "w1")
    fail_comments_once(gh)
    with pytest.raises(TrackerError, match="finish acme/widgets#1"):
        tracker.finish(issue, True, "Pull request: ...")
    tracker.finish(issue, False, "could not comment")  # what the worker does next
    assert gh.label_names(issue.number) == [LABELS.failed]


# ----- LocalTracker ------------------------------------------------------------------------------


def local_store(tmp_path: Path, n: int = 3) -> LocalTracker:
    return LocalTracker.create(tmp_path / "tracker.json", generate_mock_issues(n), LABELS)


def test_local_claim_release_finish(tmp_path: Path) -> None:
    tracker: Tracker = local_store(tmp_path)
    assert isinstance(tracker, LocalTracker)
    one, two, three = tracker.list_ready()

    assert tracker.claim(one, "w1") is True
    assert tracker.claim(one, "w2") is False
    assert tracker.claim(two, "w2") and tracker.claim(three, "w3")
    tracker.release(two, "no free worker")
    tracker.finish(one, True, "")
    tracker.finish(three, False, "tests failed")

    assert [i.number for i in tracker.list_ready()] == [2]
    assert tracker.labels_of(1)[-1:] == [
        LABELS.review
    ] and LABELS.in_progress not in tracker.labels_of(1)
    assert tracker.labels_of(3)[-1] == LABELS.failed
    assert tracker.comments(1) == ["Claimed by w1"]
    assert tracker.comments(2) == ["Claimed by w2", "Released: no free worker"]
    assert tracker.comments(3) == ["Claimed by w3", "tests failed"]
    assert tracker.claim(Issue(number=99, title="unknown"), "w1") is False
    with pytest.raises(TrackerError, match="no issue #99"):
        tracker.finish(Issue(number=99, title="unknown"), True, "hello")


def test_local_pull_requests_are_idempotent_and_share_numbers(tmp_path: Path) -> None:
    tracker = local_store(tmp_path)
    issue = tracker.issues()[0]

    first = tracker.open_pull_request(issue, issue.branch, "Fix #1", "v1")
    again = tracker.open_pull_request(issue, issue.branch, "Fix #1", "v2")
    other = tracker.open_pull_request(tracker.issues()[1], "ai-feature/issue-2", "Fix #2", "b")
    added = tracker.add_issue("a new one", "details")

    assert (first.number, first.url, first.created) == (4, "local://pulls/4", True)
    assert (again.number, again.created) == (4, False)
    assert (other.number, added.number) == (5, 6)
    assert [(p.branch, p.body) for p in tracker.pulls()] == [
        (issue.branch, "v2"),
        ("ai-feature/issue-2", "b"),
    ]
    assert added.labels == (LABELS.ready,) and added.url == "local://issues/6"


def test_local_store_survives_a_reload(tmp_path: Path) -> None:
    tracker = local_store(tmp_path)
    issue = tracker.list_ready()[0]
    tracker.claim(issue, "w1")
    tracker.open_pull_request(issue, issue.branch, "t", "b")

    reloaded = LocalTracker(tmp_path / "tracker.json", LABELS)

    assert reloaded.issues() == tracker.issues()
    assert reloaded.labels_of(issue.number) == tracker.labels_of(issue.number)
    assert reloaded.comments(issue.number) == ["Claimed by w1"]
    assert [p.number for p in reloaded.pulls()] == [4]
    assert reloaded.add_issue("next").number == 5
    manifest = json.loads((tmp_path / "tracker.json").read_text())
    assert manifest == {"format": "local-tracker/2", "data": "tracker.json.d"}
    names = ["tracker.json", "tracker.json.d", "tracker.json.lock"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    data = tmp_path / "tracker.json.d"
    assert sorted(p.name for p in (data / "issues").iterdir()) == [
        "1.json",
        "2.json",
        "3.json",
        "5.json",
    ]
    assert [p.name for p in (data / "pulls").iterdir()] == ["ai-feature%2Fissue-1.json"]
    assert (data / "next").read_text() == "6\n"


def test_local_store_must_be_created_once(tmp_path: Path) -> None:
    path = tmp_path / "store" / "tracker.json"
    with pytest.raises(TrackerError, match="no tracker store"):
        LocalTracker(path, LABELS).list_ready()
    LocalTracker.create(path, [], LABELS)
    with pytest.raises(FileExistsError):
        LocalTracker.create(path, generate_mock_issues(1), LABELS)
    assert LocalTracker(path, LABELS).issues() == []


def test_local_create_has_one_winner(tmp_path: Path) -> None:
    path = tmp_path / "tracker.json"
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def create(n: int) -> None:
        barrier.wait()
        try:
            LocalTracker.create(path, generate_mock_issues(n), LABELS)
            outcomes.append(f"created {n}")
        except FileExistsError:
            outcomes.append("exists")

    pool = [threading.Thread(target=create, args=(n,)) for n in range(1, 5)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(10)

    [won] = [o for o in outcomes if o.startswith("created")]
    assert sorted(outcomes) == sorted([won, "exists", "exists", "exists"])
    assert len(LocalTracker(path, LABELS).issues()) == int(won.split()[1])


def test_local_numbers_stay_unique_under_concurrency(tmp_path: Path) -> None:
    tracker = local_store(tmp_path, 2)
    issue = tracker.issues()[0]
    barrier = threading.Barrier(6)
    numbers: list[int] = []
    shared: list[bool] = []

    def worker(name: str) -> None:
        barrier.wait()
        for k in range(5):
            numbers.append(tracker.add_issue(f"{name}-{k}").number)
            numbers.append(tracker.open_pull_request(issue, f"{name}/{k}", "t", "b").number)
            shared.append(tracker.open_pull_request(issue, "shared", name, name).created)

    pool = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(6)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(10)

    pulls = tracker.pulls()
    shared_number = next(p.number for p in pulls if p.branch == "shared")
    assert shared.count(True) == 1 and len(shared) == 30
    assert sorted([*numbers, shared_number]) == list(range(3, 3 + 61))
    assert len(tracker.issues()) == 32 and len(pulls) == 31


def test_local_claim_and_finish_scale_to_a_thousand_issues(tmp_path: Path) -> None:
    started = time.monotonic()
    tracker = local_store(tmp_path, 1000)
    seeded = time.monotonic()
    issues = tracker.list_ready()
    threads = 8
    barrier = threading.Barrier(threads)
    wins: dict[int, list[str]] = {issue.number: [] for issue in issues}

    def worker(name: str, offset: int) -> None:
        barrier.wait()
        for issue in issues[offset:] + issues[:offset]:
            if tracker.claim(issue, name):
                wins[issue.number].append(name)
                tracker.finish(issue, True, f"done by {name}")

    pool = [
        threading.Thread(target=worker, args=(f"w{n}", n * len(issues) // threads // 2))
        for n in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(60)
    finished = time.monotonic()
    print(
        f"1000 issues: create {seeded - started:.2f}s, "
        f"claim+finish from {threads} threads {finished - seeded:.2f}s"
    )

    assert len(issues) == 1000
    assert all(len(winners) == 1 for winners in wins.values())
    assert tracker.list_ready() == []
    for record in tracker.issues():
        assert LABELS.review in record.labels and LABELS.in_progress not in record.labels
    winner = wins[500][0]
    assert tracker.comments(500) == [f"Claimed by {winner}", f"done by {winner}"]
    assert finished - started < 30  # ~4 s alone here; generous for a loaded machine


def test_local_work_on_different_issues_does_not_wait(tmp_path: Path) -> None:
    import fcntl

    tracker = local_store(tmp_path, 3)
    one, two, _ = tracker.list_ready()
    results: dict[int, bool] = {}

    def claim(issue: Issue) -> None:
        results[issue.number] = tracker.claim(issue, f"w{issue.number}")

    lock_file = tmp_path / "tracker.json.d" / "locks" / "issue-1"
    with lock_file.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another process mid-update of issue 1
        blocked = threading.Thread(target=claim, args=(one,))
        blocked.start()
        started = time.monotonic()
        free = threading.Thread(target=claim, args=(two,))
        free.start()
        free.join(5)
        assert results == {2: True} and time.monotonic() - started < 2
        tracker.finish(two, True, "not waiting either")
        tracker.add_issue("nor this")
        assert blocked.is_alive()  # issue 1 itself waits for its lock
    blocked.join(5)
    assert results == {1: True, 2: True}
    assert tracker.comments(2) == ["Claimed by w2", "not waiting either"]


CLAIMER = """
import json, sys, time
from pathlib import Path
from flows.fleet.local_tracker import LocalTracker
from flows.fleet.tracker import Labels

store, gate, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
tracker = LocalTracker(store, Labels())
issues = tracker.list_ready()
(gate.parent / f"ready-{name}").touch()
while not gate.exists():
    time.sleep(0.002)
won = [issue.number for issue in issues if tracker.claim(issue, name)]
pull = tracker.open_pull_request(issues[0], "ai-feature/shared", name, name)
print(json.dumps({"won": won, "created": pull.created}))
"""


def test_two_processes_claim_each_issue_exactly_once(tmp_path: Path) -> None:
    tracker = local_store(tmp_path, 20)
    gate = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    names = ("fleet-a", "fleet-b")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(tracker.path), str(gate), name],
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO_ROOT,
        )
        for name in names
    ]
    deadline = time.monotonic() + 10
    while not all((tmp_path / f"ready-{name}").exists() for name in names):
        assert time.monotonic() < deadline, "claimer processes did not start"
        time.sleep(0.01)
    gate.touch()
    results = [json.loads(proc.communicate(timeout=10)[0]) for proc in procs]

    assert all(proc.returncode == 0 for proc in procs)
    won_a, won_b = (set(result["won"]) for result in results)
    assert not won_a & won_b
    assert won_a | won_b == set(range(1, 21))
    for issue in tracker.issues():
        claims = [c for c in tracker.comments(issue.number) if c.startswith("Claimed by")]
        assert len(claims) == 1
        assert LABELS.in_progress in issue.labels and LABELS.ready not in issue.labels
    assert sorted(result["created"] for result in results) == [False, True]
    assert [p.branch for p in tracker.pulls()] == ["ai-feature/shared"]


def test_generate_mock_issues_is_varied_and_ready() -> None:
    issues = generate_mock_issues(12)
    assert [i.number for i in issues] == list(range(1, 13))
    assert len({i.title for i in issues}) == 12
    assert all(i.body and LABELS.ready in i.labels for i in issues)
    assert {i.priority() for i in issues} == {1, 2, 3}
    assert any(not any(label.startswith("priority:") for label in i.labels) for i in issues)
