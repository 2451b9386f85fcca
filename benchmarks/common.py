"""What the benchmarks (and the cluster tests) share: a throwaway server database, a
server prepared with this project's pool and deployments, and CPU accounting (where the
CPU of a run went, against what the machine's cores can give)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"  # what the README quotes
POOL = "local-process"  # the pool prefect.yaml deploys to
POLLER = "issue-poller/issue-poller"


def add_output_options(parser: argparse.ArgumentParser, quick_help: str) -> None:
    parser.add_argument("--quick", action="store_true", help=f"a smaller run: {quick_help}")
    parser.add_argument(
        "--out", type=Path, help="folder for the results (default: benchmarks/results; a "
        "--quick run writes only where --out says, never over the full run's results)",
    )  # fmt: skip


def write_results(args: argparse.Namespace, name: str, results: object, markdown: str) -> None:
    """Print the results and write `<name>.json` and `<name>.md` to `--out` (by default
    benchmarks/results, unless the run is a --quick one)."""
    print(markdown)
    folder: Path | None = args.out or (None if args.quick else RESULTS)
    if folder is None:
        print("(a --quick run: nothing written; give --out DIR to keep its results)")
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(f"written: {folder / name}.json and .md")


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


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds: this process (the leader), its exited children (commands, git), and the
    Prefect server it started."""

    leader: float
    children: float
    server: float

    def __sub__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(
            self.leader - other.leader, self.children - other.children, self.server - other.server
        )

    @property
    def total(self) -> float:
        return self.leader + self.children + self.server

    def per_unit_ms(self, units: int) -> dict[str, float]:
        """Milliseconds of CPU per unit of work, by where they were spent."""
        parts = {"leader": self.leader, "children": self.children, "server": self.server,
                 "total": self.total}  # fmt: skip
        return {name: round(seconds * 1000 / units, 1) for name, seconds in parts.items()}


def cpu_budget_ms(ideal_s: float, share: float, units: int) -> float:
    """CPU milliseconds per unit that this machine's cores provide when `units` must finish
    within `ideal_s / share`: above that, the target cannot be met here."""
    return round((os.cpu_count() or 1) * ideal_s / share / units * 1000, 1)


class CpuMeter:
    """Reads a CpuSplit; call `read()` before and after, and subtract."""

    def __init__(self) -> None:
        me = psutil.Process()
        self._server = [p for p in me.children(recursive=True) if _is_prefect_server(p)]

    def read(self) -> CpuSplit:
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # only those waited for
        server = 0.0
        for process in self._server:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                server += times.user + times.system
        return CpuSplit(
            leader=own.ru_utime + own.ru_stime,
            children=children.ru_utime + children.ru_stime,
            server=server,
        )


def _is_prefect_server(process: psutil.Process) -> bool:
    try:
        argv = process.cmdline()
    except psutil.Error:
        return False
    return "prefect" in " ".join(argv) and "server" in argv


def wake_penalty_ms(idle_s: float = 0.5, repeats: int = 7) -> dict[str, float]:
    """The same small piece of Python work timed on a busy CPU and right after `idle_s` of
    sleep (medians, ms). On some virtual machines a CPU that has been idle runs several
    times slower for a while; every simulated agent's sleep pays for that when it wakes."""
    import statistics
    import time

    def timed() -> float:
        started = time.perf_counter()
        _sample_work()
        return (time.perf_counter() - started) * 1000

    for _ in range(3):
        timed()
    warm = [timed() for _ in range(repeats)]
    cold = []
    for _ in range(repeats):
        time.sleep(idle_s)
        cold.append(timed())
    median = statistics.median
    return {"warm": round(median(warm), 2), "after_idle": round(median(cold), 2), "idle_s": idle_s}


def _sample_work() -> None:
    """What a worker does between agent turns, in small: models, JSON, paths."""
    import json

    from flows.fleet.models import Issue

    for number in range(1, 30):
        issue = Issue(number=number, title=f"Issue {number}", body="text " * 40)
        json.loads(issue.model_dump_json())
        Path("/tmp", issue.name, "changes", f"{issue.name}.md").resolve()
