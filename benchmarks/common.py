"""What the benchmarks share: a throwaway server database."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


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
