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

    def __init__(self, broken: set[int], claims: dict[int, str]) -> None:
        self.broken = broken
        self.claims = claims
        self.released: list[int] = []

    def last_claim(self, number: int) -> str | None:
        return self.claims.get(number)

    def get(self, number: int) -> Issue:
        if number in self.broken:
            raise TrackerError(f"read #{number}: GitHub answered 404 Not Found")
        return Issue(number=number, title="t", labels=(self.labels.in_progress,))

    def release(self, issue: Issue, reason: str) -> None:
        self.released.append(issue.number)


def test_releases_issues_whose_last_run_crashed_and_skips_the_unreadable() -> None:
    crashed = {n: run(n, Crashed()) for n in (1, 2, 3, 5, 6)}
    client = Client([
        *crashed.values(),
        run(3, Completed()),  # a later run finished issue 3: left alone
        run(4, Cancelled()),  # cancelled on purpose: left alone
    ])  # fmt: skip
    claims = {n: f"host:7 flow-run {crashed[n].id}/worker-1" for n in (1, 2, 3)} | {
        5: "other-host:9 flow-run 00000000-0000-0000-0000-000000000000/worker-2"
    }
    tracker = Tracker(broken={1}, claims=claims)  # 1: unreadable, skipped, not fatal
    released = sweep_lost_runs(client, uuid4(), "acme/widgets", tracker)  # type: ignore[arg-type]
    # 2: its crashed run's claim; 5: claimed by someone else since; 6: no claim comment at all
    assert released == [2, 6] and tracker.released == [2, 6]
