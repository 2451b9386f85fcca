"""Distributed fleet runs: one `resolve-issue` deployment run per issue, on a work pool.

The Prefect server is the fleet's coordinator. Dispatch is idempotent: an issue with an
active run is left alone, and a new run gets the deterministic idempotency key
`issue:<source>#<number>/<earlier runs>`, so two pollers racing for one issue (or a retried
poller) create one run between them; the database enforces it. The sweep gives the issues of
crashed runs back to the queue, so the next poll starts them again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from flows.fleet.models import Issue
from flows.fleet.tracker import Tracker, TrackerError

log = logging.getLogger(__name__)

RESOLVE_DEPLOYMENT = "resolve-issue/resolve-issue"
PRIORITY_QUEUES = ("urgent", "normal", "low")  # work queues for priority:1, 2, 3 and after
FLEET_TAG = "fleet"
ACTIVE_STATES = (
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
)
# A Crashed run died holding its issue (a Cancelled one was stopped on purpose: left alone).
LOST_STATES = (StateType.CRASHED,)
SWEEP_WINDOW = 200  # the most recent lost runs looked at per poll
RUN_HISTORY = 200  # an issue's most recent runs read back (the server's page size)


@dataclass(frozen=True)
class Dispatch:
    issue: int
    flow_run_id: UUID
    flow_run_name: str
    started: bool  # False: an active run for this issue already existed


def priority_queue(priority: int) -> str:
    return PRIORITY_QUEUES[min(max(priority, 1), len(PRIORITY_QUEUES)) - 1]


def source_tag(source: str) -> str:
    return f"{FLEET_TAG}:{source}"


def issue_tag(source: str, number: int) -> str:
    return f"issue:{source}#{int(number)}"


def issue_of(run: FlowRun) -> int | None:
    number = run.parameters.get("issue_number")
    return number if isinstance(number, int) else None


def runs_of_issue(
    client: SyncPrefectClient, deployment_id: UUID, source: str, number: int
) -> list[FlowRun]:
    """The most recent runs this deployment made for one issue (RUN_HISTORY at most: an
    active run is among them), newest first."""
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            tags=FlowRunFilterTags(all_=[issue_tag(source, number)]),
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=RUN_HISTORY,
    )


def attempt_of(run: FlowRun) -> int:
    """The attempt a run was dispatched as (its idempotency key ends in `/<attempt>`)."""
    suffix = (run.idempotency_key or "").rpartition("/")[2]
    return int(suffix) if suffix.isdigit() else -1


def dispatch(
    client: SyncPrefectClient,
    deployment_id: UUID,
    source: str,
    issue: Issue,
    parameters: dict[str, Any],
    work_queue: str | None = None,
) -> Dispatch:
    """Start the run that resolves `issue`, unless one is already scheduled or running.

    `work_queue`: the pool's queue for the issue's priority (workers drain higher-priority
    queues first); None for served deployments, which have no pool."""
    earlier = runs_of_issue(client, deployment_id, source, issue.number)
    active = [run for run in earlier if run.state_type in ACTIVE_STATES]
    if active:
        return Dispatch(issue.number, active[0].id, active[0].name, started=False)
    # One more than the latest attempt, not a count of runs: runs deleted since (by hand, or
    # by the server's retention) would make a count repeat a key, and the server would hand
    # back that old, finished run instead of starting one. Pollers racing share the key.
    attempt = 1 + max((attempt_of(run) for run in earlier), default=-1)
    run = client.create_flow_run_from_deployment(
        deployment_id,
        parameters={**parameters, "issue_number": issue.number},
        name=f"{issue.name}-{attempt + 1}",
        tags=[FLEET_TAG, source_tag(source), issue_tag(source, issue.number)],
        idempotency_key=f"{issue_tag(source, issue.number)}/{attempt}",
        work_queue_name=work_queue,
    )
    return Dispatch(issue.number, run.id, run.name, started=True)


def sweep_lost_runs(
    client: SyncPrefectClient, deployment_id: UUID, source: str, tracker: Tracker
) -> list[int]:
    """Release the issues whose last run crashed while holding them.

    A crashed run (its worker was killed, its machine lost) never labels its issue, which
    would stay in progress forever. Only a claim the crashed run made is given back (runs
    name their flow run in the claim). An issue that cannot be read or released is skipped with
    a warning (the next poll tries again), never blocking the others. Returns the numbers of
    the released issues."""
    lost = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            tags=FlowRunFilterTags(all_=[source_tag(source)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(LOST_STATES))),
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=SWEEP_WINDOW,
    )
    released: list[int] = []
    for number in sorted({n for run in lost if (n := issue_of(run)) is not None}):
        runs = runs_of_issue(client, deployment_id, source, number)
        last = runs[0] if runs else None
        if last is None or last.state_type not in LOST_STATES:
            continue  # a later run exists (finished, or still going)
        try:
            issue = tracker.get(number)
            if tracker.labels.in_progress not in issue.labels:
                continue  # released already, or finished by hand
            holder = tracker.last_claim(number)
            if holder is not None and str(last.id) not in holder:
                continue  # claimed by someone else since (another fleet, a person)
            state = last.state.name if last.state else "lost"
            tracker.release(issue, f"run {last.name} ended {state}; back in the queue")
        except TrackerError as exc:
            log.warning("could not release issue #%d of lost run %s: %s", number, last.name, exc)
            continue
        released.append(number)
    return released


def wait_for_run(
    client: SyncPrefectClient,
    flow_run_id: UUID,
    poll_seconds: float = 1.0,
    stop: threading.Event | None = None,
) -> FlowRun | None:
    """Poll until the run is in a final state; returns it, or None once `stop` is set
    (the waiting stops; the run goes on)."""
    stop = stop or threading.Event()
    while True:
        run = client.read_flow_run(flow_run_id)
        if run.state is not None and run.state.is_final():
            return run
        if stop.wait(poll_seconds):
            return None
