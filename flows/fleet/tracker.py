"""The fleet's issue tracker: which issues are ready, who works on which, and the pull request
each one ends in. This module holds what every tracker shares: the `Tracker` protocol the fleet
codes against, its errors and models, the label names and the claim comments. The
implementations live beside it and import this, never the other way round:
`GitHubTracker` (flows/fleet/github_tracker.py) talks to GitHub through PyGithub;
`LocalTracker` (flows/fleet/local_tracker.py) keeps the same state in JSON files for test mode.

Labels carry the state, so several workers and fleets can share one repository:
ready-for-dev -(claim)-> in-progress -(finish)-> ai-review | ai-failed, and release() puts an
issue back to ready-for-dev. With auto-merge (flows/fleet/merge.py) the leader squash-merges
approved pull requests; their "Closes #N" closes the issue.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from flows.fleet.models import (
    FAILED_LABEL,
    IN_PROGRESS_LABEL,
    READY_LABEL,
    REVIEW_LABEL,
    Issue,
    PullRequest,
)

log = logging.getLogger(__name__)


CLAIM_PREFIX = "Claimed by "
# A claim takes its three API calls within seconds (PyGithub's retries included); an issue
# whose ready label was taken longer ago than this, with no claim since, lost its claim.
CLAIM_GRACE_S = 600.0


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


def last_claim_in(comments: Iterable[str]) -> str | None:
    """Who the last claim comment among `comments` names (the text after "Claimed by"),
    None if none is a claim: `Tracker.last_claim` of either tracker."""
    claims = [body.removeprefix(CLAIM_PREFIX) for body in comments if body.startswith(CLAIM_PREFIX)]
    return claims[-1] if claims else None
