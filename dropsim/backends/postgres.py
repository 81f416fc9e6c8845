"""SQL shards as PostgreSQL databases (asyncpg, one connection pool per shard).

Missing shard databases are created on first connect, so `postgresql://host/dropsim_{shard}` works
on an empty server.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from dropsim.backends.migrations import apply_pending
from dropsim.backends.sharding import shard_of
from dropsim.errors import BackendUnavailable
from dropsim.ports import Migration, Params, Queries, Row

logger = logging.getLogger("dropsim.backends.postgres")

_CLOSE_GRACE_SECONDS = 10.0
_MIGRATION_LOCK = 0x64726F70  # "drop": serialises schema changes across processes


@lru_cache(maxsize=1024)
def numbered(sql: str) -> str:
    """`?` placeholders rewritten as asyncpg's `$1, $2, ...` (our SQL has no `?` in literals)."""
    counter = iter(range(1, 10_000))
    return re.sub(r"\?", lambda _: f"${next(counter)}", sql)


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _SessionlessConnection(asyncpg.Connection):  # type: ignore[misc]
    """A connection given back to its pool without the reset query.

    asyncpg's default reset (`CLOSE ALL; UNLISTEN *; RESET ALL; SELECT pg_advisory_unlock_all()`)
    is one more round trip on every release, i.e. on every autocommit statement. dropsim keeps no
    session state (no LISTEN, SET, session advisory locks or cursors outside a transaction), and
    asyncpg still rolls back a transaction left open, so nothing needs resetting.
    """

    def get_reset_query(self) -> str:
        return ""


class _ConnectionQueries:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _rowcount(await self._connection.execute(numbered(sql), *params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        await self._connection.executemany(numbered(sql), rows)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._connection.fetch(numbered(sql), *params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._connection.fetchrow(numbered(sql), *params)
        return row


KEPT_CONNECTIONS = 4
"""Connections a shard's autocommit statements keep out of the pool between statements."""


class _PoolQueries:
    """Autocommit statements on a pool: each takes a connection for one statement.

    Up to `KEPT_CONNECTIONS` connections stay with these queries between statements instead of
    going back to the pool: asyncpg's acquire and release (a queue, a task to shield the
    release, the release's bookkeeping) are about a quarter of a statement's client CPU
    (`benchmarks/sql_statements.py`). A busier moment borrows more from the pool and gives the
    extra back. A connection is kept only after a statement that finished or failed on the
    server's side (a PostgreSQL error leaves it clean outside a transaction); any other error
    or a cancelled caller sends it back to the pool, which resets or replaces it. Transactions
    take a kept connection too when one is free, so keeping never starves them of the pool.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._kept: list[Any] = []
        self._closing = False

    async def _take(self) -> Any:
        while self._kept:
            connection = self._kept.pop()
            if not connection.is_closed():
                return connection
            await self._pool.release(connection)  # the server closed it: the pool replaces it
        return await self._pool.acquire()

    async def _put_back(self, connection: Any, error: BaseException | None) -> None:
        """Keep `connection` after a clean end or a PostgreSQL error (see the class docstring),
        unless enough are kept or the queries are closing; else give it to the pool."""
        clean = error is None or isinstance(error, asyncpg.PostgresError)
        if clean and len(self._kept) < KEPT_CONNECTIONS and not self._closing:
            self._kept.append(connection)
        else:
            await self._pool.release(connection)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """A connection for a block of statements (a transaction)."""
        connection = await self._take()
        try:
            yield connection
        except BaseException as error:
            await self._put_back(connection, error)
            raise
        await self._put_back(connection, None)

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        # `connection()` inlined: an async context manager costs this hot path a few us
        connection = await self._take()
        try:
            result = await getattr(connection, method)(numbered(sql), *args)
        except BaseException as error:
            await self._put_back(connection, error)
            raise
        await self._put_back(connection, None)
        return result

    async def execute(self, sql: str, params: Params = ()) -> int:
        return _rowcount(await self._run("execute", sql, *params))

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        # atomic without BEGIN and COMMIT: asyncpg sends every row's Bind/Execute, then one
        # Sync, so the rows share PostgreSQL's implicit transaction (asyncpg >= 0.22)
        await self._run("executemany", sql, rows)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._run("fetch", sql, *params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        row: Row | None = await self._run("fetchrow", sql, *params)
        return row

    async def close(self) -> None:
        """Give the kept connections back, so that the pool can close (a statement still
        running gives its connection back to the pool when it ends)."""
        self._closing = True
        kept, self._kept = self._kept, []
        for connection in kept:
            await self._pool.release(connection)


class PostgresDatabase:
    """`postgresql://user@host:5432/dropsim_{shard}`: one database (and pool) per shard."""

    dialect = "postgresql"

    def __init__(self, pools: Sequence[Any]) -> None:
        self._pools = list(pools)
        self._autocommit = [_PoolQueries(pool) for pool in self._pools]
        self.shard_count = len(self._pools)

    @classmethod
    async def connect(
        cls, url: str, shard_count: int, *, min_size: int = 1, max_size: int = 10
    ) -> PostgresDatabase:
        """Open a pool per shard, creating shard databases that do not exist yet."""
        url = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        pools = []
        try:
            for index in range(shard_count):
                shard_url = url.replace("{shard}", str(index))
                await _ensure_database(shard_url)
                pool = await asyncpg.create_pool(
                    shard_url,
                    min_size=min_size,
                    max_size=max_size,
                    command_timeout=60,
                    connection_class=_SessionlessConnection,
                )
                pools.append(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            for pool in pools:
                await pool.close()
            raise BackendUnavailable(f"cannot reach PostgreSQL at {_safe(url)}: {exc}") from None
        return cls(pools)

    def shard_of(self, key: str) -> int:
        return shard_of(key, self.shard_count)

    def shard(self, index: int) -> Queries:
        return self._autocommit[index]

    @asynccontextmanager
    async def transaction(self, index: int) -> AsyncIterator[Queries]:
        # on a kept connection when one is free, so kept connections never starve transactions
        async with self._autocommit[index].connection() as connection, connection.transaction():
            yield _ConnectionQueries(connection)

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        for index in range(self.shard_count):
            async with self.transaction(index) as tx:
                await tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                await apply_pending(tx, migrations)

    async def ping(self) -> None:
        for queries in self._autocommit:
            await queries.fetch_one("SELECT 1")

    async def close(self) -> None:
        """Close every pool; a pool whose connections are not all back within
        `_CLOSE_GRACE_SECONDS` (asyncpg waits for them forever) is terminated instead."""
        for queries in self._autocommit:
            await queries.close()
        for pool in self._pools:
            try:
                await asyncio.wait_for(pool.close(), _CLOSE_GRACE_SECONDS)
            except TimeoutError:
                logger.error("a PostgreSQL pool did not close in time; terminating it")
                pool.terminate()


async def _ensure_database(url: str) -> None:
    """Create the database named in `url` if the server does not have it yet."""
    try:
        connection = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        maintenance = urlunsplit(parts._replace(path="/postgres"))
        admin = await asyncpg.connect(maintenance)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # created by a concurrent process
        finally:
            await admin.close()
    else:
        await connection.close()


def _safe(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{host}{port}"))
