"""What the benchmarks (and the cluster tests) share: a throwaway server database, and a
server prepared with this project's pool and deployments."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
POOL = "local-process"  # the pool prefect.yaml deploys to
POLLER = "issue-poller/issue-poller"


@contextlib.contextmanager
def postgres_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database on 127.0.0.1:5432 (user postgres), dropped afterwards;
    yields its SQLAlchemy URL for PREFECT_SERVER_DATABASE_CONNECTION_URL. OSError or
    asyncpg.PostgresError when PostgreSQL is not reachable."""
    import asyncio

    import asyncpg  # type: ignore[import-untyped]  # Prefect's own PostgreSQL driver

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(user="postgres", host="127.0.0.1", database="postgres")
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def server_database(name: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the server when one is reachable, else SQLite; sets
    PREFECT_SERVER_DATABASE_CONNECTION_URL for servers started inside. Yields the kind.

    The SQLite server falls behind under thousands of task-run events (its writes queue,
    API calls get retried with 2 s sleeps), which would measure the database, not us.
    """
    import asyncpg

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_database(name))
        except (OSError, asyncpg.PostgresError) as exc:
            print(f"PostgreSQL not reachable ({exc}); using SQLite", flush=True)
            url = None
        if url is None:
            yield "sqlite"
            return
        os.environ["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = url
        try:
            yield "postgresql"
        finally:
            os.environ.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)


def prepare_server(env: dict[str, str], init_workers: int, crash_after: int | None = None) -> None:
    """On the server of env's PREFECT_API_URL: init (pool, queues, crash detection, block
    types) and deploy --all from prefect.yaml; then switch the poller's schedule off and drop
    runs it already scheduled, so that only the caller's runs exist."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    init = subprocess.run(
        [sys.executable, "-m", "flows.deploy", "init", "--pool", POOL,
         "--workers", str(init_workers),
         *(["--crash-after", str(crash_after)] if crash_after else [])],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert init.returncode == 0, init.stdout + init.stderr
    deploy = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    with get_client(sync_client=True) as client:
        poller = client.read_deployment_by_name(POLLER)
        for schedule in client.read_deployment_schedules(poller.id):
            client.update_deployment_schedule(poller.id, schedule.id, active=False)
        scheduled = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[poller.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
        )
        for run in scheduled:
            client.delete_flow_run(run.id)
