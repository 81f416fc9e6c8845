"""Group commit: concurrent writes of one statement on one shard share a transaction.

A commit per order caps a SQLite shard at a few thousand orders a second, and a PostgreSQL
statement per order costs a pool checkout and a round trip; while one batch commits, the next
one gathers, so under a rush each commit carries many rows and under a trickle each row commits
alone (no added latency). A writer answers whether the row was written, not how many rows a
statement changed: use it for inserts, and for updates whose caller can do without the count.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from dropsim.batching import Batcher
from dropsim.ports import ShardedDatabase


class GroupWriter:
    """`write(shard, row)` returns once `statement` with `row` is committed (or raises its own
    error)."""

    def __init__(self, db: ShardedDatabase, statement: str, *, max_batch: int = 500) -> None:
        self._db = db
        self._statement = statement
        self._max_batch = max_batch
        self._shards: dict[int, Batcher[Sequence[Any], None]] = {}

    async def write(self, shard: int, row: Sequence[Any]) -> None:
        batcher = self._shards.get(shard)
        if batcher is None:
            batcher = self._shards[shard] = Batcher(
                partial(self._write, shard), max_batch=self._max_batch
            )
        await batcher.submit(row)

    async def _write(self, shard: int, rows: list[Sequence[Any]]) -> list[BaseException | None]:
        queries = self._db.shard(shard)
        if len(rows) == 1:  # the usual case below a rush: a plain statement is the cheaper call
            try:
                await queries.execute(self._statement, rows[0])
            except Exception as exc:
                return [exc]
            return [None]
        try:
            # one transaction on every backend (see ShardedDatabase.shard)
            await queries.execute_many(self._statement, rows)
        except Exception:
            # one bad row must not fail its neighbours: retry them one by one
            outcomes: list[BaseException | None] = []
            for row in rows:
                try:
                    await queries.execute(self._statement, row)
                except Exception as row_error:
                    outcomes.append(row_error)
                else:
                    outcomes.append(None)
            return outcomes
        return [None] * len(rows)
