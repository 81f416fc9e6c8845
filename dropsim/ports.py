"""The interfaces services depend on; backends implement them, `dropsim.backends` picks one by URL.

The KV port is the `redis.asyncio.Redis` client interface itself: fakeredis implements it in
process (Lua included), real Redis over the network, so a Lua script runs unchanged on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from redis.asyncio import Redis

KeyValueStore: TypeAlias = Redis
"""Cache, counters, Lua scripts, locks and the event log. Every backend opens it with
`decode_responses=True`, so replies are `str` although redis-py types them `bytes | str`."""

Row: TypeAlias = Sequence[Any]
"""A result row, indexable by column position."""

Params: TypeAlias = Sequence[Any]


@dataclass(frozen=True, slots=True)
class Migration:
    """A named, ordered list of DDL statements, applied once per shard, in the order given.

    Write portable DDL (TEXT, BIGINT, DOUBLE PRECISION, `IF NOT EXISTS`); never edit a migration
    that has shipped: add the next one.
    """

    name: str
    statements: Sequence[str]


class Queries(Protocol):
    """Statements on one shard. SQL uses `?` placeholders; backends translate for their driver."""

    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed."""

    async def execute_many(self, sql: str, rows: Iterable[Params]) -> None:
        """Run one statement once per parameter row, in one round trip where the driver allows."""

    async def fetch_all(self, sql: str, params: Params = ()) -> list[Row]:
        """Run a query and return every row."""

    async def fetch_one(self, sql: str, params: Params = ()) -> Row | None:
        """Run a query and return its first row, or None."""


class ShardedDatabase(Protocol):
    """N SQL shards. Outside `transaction` every statement commits on its own, and an
    `execute_many` commits all its rows in one transaction (or none of them)."""

    dialect: str
    """`sqlite` or `postgresql`, for the few statements that differ."""
    shard_count: int

    def shard_of(self, key: str) -> int:
        """The shard that owns `key` (stable across processes and restarts)."""

    def shard(self, index: int) -> Queries:
        """Autocommit statements on shard `index`."""

    def transaction(self, index: int) -> AbstractAsyncContextManager[Queries]:
        """A transaction on shard `index`: committed on exit, rolled back on an exception."""

    async def migrate(self, migrations: Sequence[Migration]) -> None:
        """Apply on every shard each migration not applied there yet (safe to run concurrently)."""

    async def ping(self) -> None:
        """Raise if any shard does not answer."""

    async def close(self) -> None:
        """Release connections."""
