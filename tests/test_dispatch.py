"""The sweep of lost runs, on stand-in clients: which issues it gives back, and that one bad
issue never blocks the others."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Completed, Crashed

from flows.fleet.dispatch import sweep_lost_runs
from flows.fleet.models import Issue
from flows.fleet.tracker import Labels, TrackerError


def run(number: int, state: Any) -> FlowRun:
    return FlowRun(id=uuid4(), flow_id=uuid4(), name=f"issue-{number}", state=state,
                   state_type=state.type, parameters={"issue_number": number})  # fmt: skip


class Client:
    """read_flow_runs as the sweep asks it: first the lost runs, then one issue's runs."""

    def __init__(self, runs: list[FlowRun]) -> None:
        self.runs = runs

    def read_flow_runs(self, flow_run_filter: Any, **_: Any) -> list[FlowRun]:
        if flow_run_filter.state is not None:
            return [r for r in self.runs if r.state_type == StateType.CRASHED]
        (tag,) = flow_run_filter.tags.all_
        number = int(tag.rsplit("#", 1)[1])
        return [r for r in self.runs if r.parameters["issue_number"] == number]


class Tracker:
    labels = Labels()

    def __init__(self, broken: set[int]) -> None:
        self.broken = broken
        self.released: list[int] = []

    def get(self, number: int) -> Issue:
        if number in self.broken:
            raise TrackerError(f"read #{number}: GitHub answered 404 Not Found")
        return Issue(number=number, title="t", labels=(self.labels.in_progress,))

    def release(self, issue: Issue, reason: str) -> None:
        self.released.append(issue.number)


def test_releases_issues_whose_last_run_crashed_and_skips_the_unreadable() -> None:
    client = Client([
        run(1, Crashed()),                     # unreadable issue: skipped, not fatal
        run(2, Crashed()),                     # released
        run(3, Crashed()), run(3, Completed()),  # a later run finished it: left alone
        run(4, Cancelled()),                   # cancelled on purpose: left alone
    ])  # fmt: skip
    tracker = Tracker(broken={1})
    released = sweep_lost_runs(client, uuid4(), "acme/widgets", tracker)  # type: ignore[arg-type]
    assert released == [2] and tracker.released == [2]
