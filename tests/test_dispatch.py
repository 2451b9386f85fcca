"""The sweep of lost runs, on stand-in clients: which issues it gives back, and that one bad
issue never blocks the others."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.states import Cancelled, Completed, Crashed, Running

from flows.fleet.dispatch import RUN_HISTORY, dispatch, issue_tag, sweep_lost_runs, wait_for_run
from flows.fleet.models import Issue
from flows.fleet.tracker import Labels, TrackerError


def run(number: int, state: Any, attempt: int | None = None) -> FlowRun:
    key = None if attempt is None else f"{issue_tag('acme/widgets', number)}/{attempt}"
    return FlowRun(id=uuid4(), flow_id=uuid4(), name=f"issue-{number}", state=state,
                   state_type=state.type, parameters={"issue_number": number},
                   idempotency_key=key)  # fmt: skip


class Client:
    """read_flow_runs as the sweep and dispatch ask it (`runs` oldest first, as created),
    and create_flow_run_from_deployment, which records what it was asked."""

    def __init__(self, runs: list[FlowRun]) -> None:
        self.runs = runs
        self.created: list[dict[str, Any]] = []

    def read_flow_runs(
        self, flow_run_filter: Any, sort: FlowRunSort, limit: int, **_: Any
    ) -> list[FlowRun]:
        if flow_run_filter.state is not None:
            found = [r for r in self.runs if r.state_type == StateType.CRASHED]
        else:
            (tag,) = flow_run_filter.tags.all_
            number = int(tag.rsplit("#", 1)[1])
            found = [r for r in self.runs if r.parameters["issue_number"] == number]
        newest_first = sort == FlowRunSort.EXPECTED_START_TIME_DESC
        return (found[::-1] if newest_first else found)[:limit]

    def create_flow_run_from_deployment(self, deployment_id: UUID, **request: Any) -> FlowRun:
        self.created.append(request)
        return FlowRun(id=uuid4(), flow_id=uuid4(), name=request["name"])


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


def test_a_new_dispatch_follows_the_latest_attempt_even_after_runs_were_deleted() -> None:
    """Attempts 0 and 1 ran, 1 was deleted: counting runs would repeat key /1, which the
    server answers with the old finished run instead of a new one."""
    client = Client([run(7, Completed(), attempt=0), run(7, Completed(), attempt=2)])
    issue = Issue(number=7, title="t")
    started = dispatch(client, uuid4(), "acme/widgets", issue, {})  # type: ignore[arg-type]
    assert started.started and client.created[0]["idempotency_key"].endswith("#7/3")
    assert client.created[0]["name"] == "issue-7-4"


def test_a_crash_loop_longer_than_a_page_of_runs_is_still_swept() -> None:
    """The sweep looks at the issue's newest run, however many came before."""
    runs = [run(8, Crashed(), attempt=n) for n in range(RUN_HISTORY + 5)]
    client = Client(runs)
    newest = runs[-1]
    tracker = Tracker(broken=set(), claims={8: f"host:7 flow-run {newest.id}/worker-1"})
    released = sweep_lost_runs(client, uuid4(), "acme/widgets", tracker)  # type: ignore[arg-type]
    assert released == [8]
    started = dispatch(client, uuid4(), "acme/widgets", Issue(number=8, title="t"), {})  # type: ignore[arg-type]
    assert client.created[0]["idempotency_key"].endswith(f"#8/{RUN_HISTORY + 5}")
    assert started.started


def test_waiting_for_a_run_ends_when_the_leader_is_stopped() -> None:
    """An interrupted distributed leader stops waiting (the run goes on on the pool)."""
    pending = run(7, Running())
    done = run(8, Completed())
    client = SimpleNamespace(read_flow_run=lambda run_id: pending if run_id == pending.id else done)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert wait_for_run(client, pending.id, poll_seconds=30, stop=stop) is None  # type: ignore[arg-type]
    assert time.monotonic() - started < 10
    assert wait_for_run(client, done.id, stop=stop) is done  # type: ignore[arg-type]
