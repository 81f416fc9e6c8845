"""Group commit: concurrent inserts on one shard share a transaction.

A commit per order caps a SQLite shard at a few thousand orders a second; while one batch
commits, the next one gathers, so under a rush each commit carries many rows and under a trickle
each row commits alone (no added latency).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from dropsim.ports import ShardedDatabase


class GroupInserter:
    """`insert(shard, row)` returns once `row` is committed (or raises its own error)."""

    def __init__(self, db: ShardedDatabase, statement: str, *, max_batch: int = 500) -> None:
        self._db = db
        self._statement = statement
        self._max_batch = max_batch
        self._pending: dict[int, list[tuple[Sequence[Any], asyncio.Future[None]]]] = {}
        self._flushing: set[int] = set()

    async def insert(self, shard: int, row: Sequence[Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(shard, []).append((row, future))
        if shard not in self._flushing:
            self._flushing.add(shard)
            asyncio.create_task(self._flush(shard))  # noqa: RUF006 (the futures hold the result)
        await future

    async def _flush(self, shard: int) -> None:
        try:
            while self._pending.get(shard):
                queue = self._pending[shard]
                batch, self._pending[shard] = queue[: self._max_batch], queue[self._max_batch :]
                await self._write(shard, batch)
        finally:
            self._flushing.discard(shard)

    async def _write(
        self, shard: int, batch: list[tuple[Sequence[Any], asyncio.Future[None]]]
    ) -> None:
        try:
            # one transaction on every backend (see ShardedDatabase.shard)
            await self._db.shard(shard).execute_many(self._statement, [row for row, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc)
                return
            # one bad row must not fail its neighbours: retry them one by one
            for row, future in batch:
                try:
                    await self._db.shard(shard).execute(self._statement, row)
                except Exception as row_error:
                    _settle(future, row_error)
                else:
                    _settle(future, None)
            return
        for _, future in batch:
            _settle(future, None)


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():  # its awaiting request was cancelled meanwhile
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
