"""Prepare a Prefect server for the fleet: the work pool whose concurrency limit is the
fleet size, and the automation that marks runs Crashed when their heartbeats stop."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import StateType, WorkPool
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.exceptions import ObjectNotFound

from flows.config import ConfigError
from flows.fleet.dispatch import FLEET_TAG, PRIORITY_QUEUES

CRASH_DETECTION = "fleet-crash-detection"
FINAL_EVENTS = {
    f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed")
}


def ensure_work_pool(
    client: SyncPrefectClient, name: str, pool_type: str, concurrency_limit: int | None
) -> WorkPool:
    """Create the pool, or set the concurrency limit of an existing one; ConfigError when
    an existing pool of that name has another type (its workers run runs another way)."""
    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        return client.create_work_pool(
            WorkPoolCreate(name=name, type=pool_type, concurrency_limit=concurrency_limit)
        )
    if pool.type != pool_type:
        problem = f"work pool {name!r} exists with type {pool.type!r}, not {pool_type!r}: "
        raise ConfigError("command line", "--type", problem + "choose another --pool name")
    client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
    return client.read_work_pool(name)


def ensure_priority_queues(client: SyncPrefectClient, pool: str) -> None:
    """Work queues `urgent`, `normal`, `low` with priorities 1, 2, 3: workers take runs from
    a higher-priority queue first, so priority:1 issues go before the rest."""
    for priority, name in enumerate(PRIORITY_QUEUES, start=1):
        try:
            queue = client.read_work_queue_by_name(name, work_pool_name=pool)
        except ObjectNotFound:
            client.create_work_queue(name, work_pool_name=pool, priority=priority)
            continue
        if queue.priority != priority:
            client.update_work_queue(queue.id, priority=priority)


HEARTBEAT_SECONDS = 30  # PREFECT_FLOWS_HEARTBEAT_FREQUENCY of the deployments (prefect.yaml)
MIN_CRASH_AFTER = 2 * HEARTBEAT_SECONDS  # a late heartbeat must not crash a live run
MAX_CRASH_AFTER = 86_400  # a day: longer, and a dead run's issue waits all that time
MAX_POOL_CONCURRENCY = 10_000  # a fleet size; Prefect's server refuses far larger limits


def crash_detection(within_seconds: float) -> AutomationCore:
    """Mark a flow run Crashed when no heartbeat (nor final state) follows its last
    heartbeat within `within_seconds`: its process, worker or machine died. Runs send
    heartbeats every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (the deployments set 30)."""
    return AutomationCore(
        name=CRASH_DETECTION,
        description="Flow runs whose heartbeats stopped are marked Crashed, so the issue "
        "poller gives their issues back to the queue.",
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # only the fleet's own runs (dispatch tags them), not every run on the server
            match_related={
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{FLEET_TAG}",
            },
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *FINAL_EVENTS},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                name=None,
                state=StateType.CRASHED,
                message=f"no heartbeat for {within_seconds:g}s: the run's worker died",
                force=True,
            )
        ],
    )


def ensure_crash_detection(client: SyncPrefectClient, within_seconds: float = 75) -> UUID:
    """Create the crash-detection automation, replacing an older version of it (only once
    the new one is built: a bad value leaves the old one in place)."""
    automation = crash_detection(within_seconds)
    for existing in client.read_automations_by_name(CRASH_DETECTION):
        client.delete_automation(existing.id)
    return client.create_automation(automation)
