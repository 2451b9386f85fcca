"""Auto-merge on approval (the fleet setting `auto_merge_on_approval`): at each poll the leader
squash-merges the fleet's own pull requests that a reviewer approved, and GitHub closes their
issues through the "Closes #N" of the pull request.

Only the fleet's pull requests are candidates (Tracker.review_pulls): from `ai-feature/issue-N`
of the repository itself, into the default branch, for an open issue N labelled for review.
Reviews decide as on GitHub: each reviewer's latest APPROVED, CHANGES_REQUESTED or DISMISSED
review counts (comments change nothing); a pull request is merged when at least one reviewer
approved its current head commit and none requests changes. A pull request that cannot be
merged (conflicts, branch protection, a head that moved) is reported and left alone.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from flows.fleet.tracker import Review, ReviewPull, Tracker, TrackerError

APPROVED = "APPROVED"
CHANGES_REQUESTED = "CHANGES_REQUESTED"
_DECISIVE = (APPROVED, CHANGES_REQUESTED, "DISMISSED")


class MergeResult(BaseModel):
    """What auto-merge did with one of the fleet's pull requests."""

    pull: int
    issue: int
    url: str
    merged: bool
    reason: str = Field(description="merged, awaiting approval, changes requested, or the error")
    approved_by: list[str] = Field(default_factory=list)


def review_decision(pull: ReviewPull) -> tuple[list[str], list[str], list[str]]:
    """(approvers of the head commit, reviewers requesting changes, approvers of an older
    commit), from each reviewer's latest decisive review. Only the approvals of reviewers
    who own or may write to the repository count; anyone's request for changes blocks."""
    latest: dict[str, Review] = {}
    for review in pull.reviews:
        if review.state.upper() in _DECISIVE:
            latest[review.reviewer.lower()] = review
    approvals = [r for r in latest.values() if r.state.upper() == APPROVED and r.trusted]
    current = [r for r in approvals if _reviewed_head(r, pull)]
    stale = [r.reviewer for r in approvals if not _reviewed_head(r, pull)]
    blockers = [r.reviewer for r in latest.values() if r.state.upper() == CHANGES_REQUESTED]
    return [r.reviewer for r in current], blockers, stale


def merge_approved(tracker: Tracker, enabled: bool) -> list[MergeResult]:
    """Merge the fleet's approved pull requests; one result per candidate, merged or not.

    Nothing at all (not even a request) when `enabled` is False. A pull request that fails to
    merge is reported with the tracker's error and the others go on; an error listing the
    candidates (GitHub unreachable) raises TrackerError."""
    if not enabled:
        return []
    results = []
    for pull in tracker.review_pulls():
        approvers, blockers, stale = review_decision(pull)
        merged = False
        if blockers:
            reason = f"changes requested by {', '.join(blockers)}"
        elif not approvers:
            reason = "awaiting approval" + (" of the latest commit" if stale else "")
        else:
            try:
                tracker.merge(pull)
            except TrackerError as exc:
                reason = f"not merged: {exc}"
            else:
                merged, reason = True, "merged"
        results.append(
            MergeResult(
                pull=pull.number,
                issue=pull.issue,
                url=pull.url,
                merged=merged,
                reason=reason,
                approved_by=approvers,
            )
        )
    return results


def _reviewed_head(review: Review, pull: ReviewPull) -> bool:
    """Whether `review` is of the pull request's current head (unknown on either side: yes)."""
    return review.commit is None or pull.head_sha is None or review.commit == pull.head_sha
