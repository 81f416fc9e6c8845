"""SQL shards as SQLite files (aiosqlite, WAL): the embedded default, no server needed.

Each shard has one writer connection, serialised by an asyncio lock (SQLite has one writer at a
time anyway; the lock keeps a coroutine's statements out of another coroutine's transaction), and
one reader connection, so reads never wait behind a write transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from dropsim.backends.migrations import apply_pending
from dropsim.backends.sharding import shard_of
from dropsim.batching import Batcher
from dropsim.errors import BackendUnavailable
from dropsim.ports import Migration, Params, Queries, Row

_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA cache_size=-65536",
)


class _ConnectionQueries:
    """Statements on one aiosqlite connection (the caller holds whatever lock is needed)."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Params = ()) -> int:
        cursor = await self._connection.execute(sql, params)
        changed: int = cursor.rowcount
        await cursor.close()
        return changed

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        await self._connection.executemany(sql, rows)

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._connection.execute_fetchall(sql, params))

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self._connection.execute_fetchall(sql, params)
        for row in rows:
            return tuple(row)
        return None


class _Shard:
    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.writer = writer
        self.reader = reader
        self.lock = asyncio.Lock()
        self.write_queries = _ConnectionQueries(writer)
        self.read_queries = _ConnectionQueries(reader)


def _each(connection: sqlite3.Connection, statements: list[tuple[str, Params]]) -> list[Any]:
    """In the connection's thread: run the statements in one transaction, each under its own
    savepoint, collecting its row count or its error, so one failing statement does not touch
    the others, and the batch pays one commit (one WAL append of each page it changed) instead
    of one per statement."""
    outcomes: list[Any] = []
    connection.execute("BEGIN IMMEDIATE")
    try:
        for sql, params in statements:
            connection.execute("SAVEPOINT statement")
            try:
                cursor = connection.execute(sql, params)
                outcomes.append(cursor.rowcount)
                cursor.close()
            except sqlite3.Error as exc:
                connection.execute("ROLLBACK TO statement")
                outcomes.append(exc)
            connection.execute("RELEASE statement")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return outcomes


def _many(connection: sqlite3.Connection, sql: str, rows: list[Params]) -> None:
    """In the connection's thread: all rows in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.executemany(sql, rows)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


class _AutocommitQueries:
    """Shard statements outside a transaction: writes take the writer lock, reads do not.

    Under load the cost of a write is not SQLite's (a fraction of a millisecond) but the hand-off
    to aiosqlite's thread and back, which was measured at ~10 ms a statement while the event
    loop is busy. So concurrent writes are gathered and run in one hand-off and one transaction
    per batch (each statement under its own savepoint: its error is its own), and
    `execute_many` is one hand-off too.
    """

    def __init__(self, shard: _Shard) -> None:
        self._shard = shard
        self._writes: Batcher[tuple[str, Params], int] = Batcher(self._write, max_batch=1000)

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._writes.submit((sql, params))

    async def _write(self, statements: list[tuple[str, Params]]) -> list[int | BaseException]:
        async with self._shard.lock:
            outcomes: list[int | BaseException] = await self._in_thread(_each, statements)
        return outcomes

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        async with self._shard.lock:
            await self._in_thread(_many, sql, list(rows))

    async def _in_thread(self, function: Any, *args: Any) -> Any:
        # aiosqlite runs every call as a function on its connection's thread; `_execute` is
        # how its own methods do that (pinned: aiosqlite < 1)
        writer = self._shard.writer
        return await writer._execute(function, writer._conn, *args)  # type: ignore[no-untyped-call]

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._shard.read_queries.fetch_all(sql, params)

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        return await self._shard.read_queries.fetch_one(sql, params)


class SQLiteDatabase:
    """`sqlite:///<dir>/shard-{shard}.db`: one SQLite file per shard."""

    dialect = "sqlite"

    def __init__(self, shards: Sequence[_Shard]) -> None:
        self._shards = list(shards)
        self._autocommit = [_AutocommitQueries(shard) for shard in self._shards]
        self.shard_count = len(self._shards)

    @classmethod
    async def connect(cls, url: str, shard_count: int) -> SQLiteDatabase:
        """Open (creating if needed) every shard file named by `url`."""
        shards = []
        for index in range(shard_count):
            path = Path(sqlite_path(url).replace("{shard}", str(index)))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                writer = await _open(path)
                reader = await _open(path)
            except (OSError, aiosqlite.Error) as exc:
                raise BackendUnavailable(f"cannot open SQLite shard {path}: {exc}") from None
            shards.append(_Shard(writer, reader))
        return cls(shards)

    def shard_of(self, key: str) -> int:
        return shard_of(key, self.shard_count)

    def shard(self, index: int) -> Queries:
        return self._autocommit[index]

    @asynccontextmanager
    async def transaction(self, index: int) -> AsyncIterator[Queries]:
        shard = self._shards[index]
        async with shard.lock:
            await shard.writer.execute("BEGIN IMMEDIATE")
            try:
                yield shard.write_queries
            except BaseException:
                await shard.writer.rollback()
                raise
            await shard.writer.commit()

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        for index in range(self.shard_count):
            async with self.transaction(index) as tx:
                await apply_pending(tx, migrations)

    async def ping(self) -> None:
        for queries in self._autocommit:
            await queries.fetch_one("SELECT 1")

    async def close(self) -> None:
        for shard in self._shards:
            await shard.writer.close()
            await shard.reader.close()


def sqlite_path(url: str) -> str:
    """The file path in a `sqlite:///relative` or `sqlite:////absolute` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise BackendUnavailable(f"not a SQLite URL: {url}")
    return url[len(prefix) :]


async def _open(path: Path) -> aiosqlite.Connection:
    connection: Any = await aiosqlite.connect(path, isolation_level=None)
    for pragma in _PRAGMAS:
        await connection.execute(pragma)
    return connection  # type: ignore[no-any-return]
