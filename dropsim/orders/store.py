"""The orders ledger in SQL, sharded by user id: the truth the Redis gate is rebuilt from."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from dropsim.group_commit import GroupWriter
from dropsim.orders.models import Order, OrderStatus
from dropsim.ports import Migration, Row, ShardedDatabase
from dropsim.timeutil import to_datetime

MIGRATIONS = (
    Migration(
        "orders-001",
        (
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
            "drop_id TEXT NOT NULL, quantity INTEGER NOT NULL, amount_cents BIGINT NOT NULL, "
            "idempotency_key TEXT NOT NULL, status TEXT NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, "
            "expires_at DOUBLE PRECISION NOT NULL, UNIQUE (user_id, idempotency_key))",
            "CREATE INDEX IF NOT EXISTS orders_by_drop ON orders (drop_id, status)",
            "CREATE INDEX IF NOT EXISTS orders_by_user ON orders (user_id, id)",
        ),
    ),
)

_COLUMNS = (
    "id, user_id, drop_id, quantity, amount_cents, idempotency_key, status, created_at, "
    "updated_at, expires_at"
)
_INSERT = f"INSERT INTO orders ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _order(row: Row) -> Order:
    return Order(
        id=row[0],
        user_id=row[1],
        drop_id=row[2],
        quantity=int(row[3]),
        amount_cents=int(row[4]),
        idempotency_key=row[5],
        status=OrderStatus(row[6]),
        created_at=to_datetime(row[7]),
        updated_at=to_datetime(row[8]),
        expires_at=to_datetime(row[9]),
    )


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """An order as reconciliation and audit see it."""

    order_id: str
    user_id: str
    quantity: int
    status: OrderStatus
    idempotency_key: str
    expires_at: float


class OrderStore:
    def __init__(self, db: ShardedDatabase) -> None:
        self._db = db
        self._inserts = GroupWriter(db, _INSERT)

    async def insert(self, order: Order) -> None:
        """Write a new order row (committed when this returns)."""
        await self._inserts.write(
            self._db.shard_of(order.user_id),
            (
                order.id,
                order.user_id,
                order.drop_id,
                order.quantity,
                order.amount_cents,
                order.idempotency_key,
                order.status.value,
                order.created_at.timestamp(),
                order.updated_at.timestamp(),
                order.expires_at.timestamp(),
            ),
        )

    async def order(self, user_id: str, order_id: str) -> Order | None:
        row = await self._db.shard(self._db.shard_of(user_id)).fetch_one(
            f"SELECT {_COLUMNS} FROM orders WHERE id = ? AND user_id = ?", (order_id, user_id)
        )
        return None if row is None else _order(row)

    async def orders_of_user(self, user_id: str, after: str, limit: int) -> list[Order]:
        rows = await self._db.shard(self._db.shard_of(user_id)).fetch_all(
            f"SELECT {_COLUMNS} FROM orders WHERE user_id = ? AND id > ? ORDER BY id LIMIT ?",
            (user_id, after, limit),
        )
        return [_order(row) for row in rows]

    async def orders_of_user_for_drop(self, user_id: str, drop_id: str, limit: int) -> list[Order]:
        rows = await self._db.shard(self._db.shard_of(user_id)).fetch_all(
            f"SELECT {_COLUMNS} FROM orders WHERE user_id = ? AND drop_id = ? ORDER BY id LIMIT ?",
            (user_id, drop_id, limit),
        )
        return [_order(row) for row in rows]

    async def move(
        self,
        user_id: str,
        order_id: str,
        expected: Sequence[OrderStatus],
        target: OrderStatus,
        now: float,
    ) -> bool:
        """Compare-and-set the status: True only for the caller that made the move."""
        marks = ", ".join("?" for _ in expected)
        changed = await self._db.shard(self._db.shard_of(user_id)).execute(
            f"UPDATE orders SET status = ?, updated_at = ? WHERE id = ? AND user_id = ? "
            f"AND status IN ({marks})",
            (target.value, now, order_id, user_id, *(status.value for status in expected)),
        )
        return changed == 1

    async def ledger(self, drop_id: str) -> list[LedgerLine]:
        """Every order of a drop, from every shard."""
        query = (
            "SELECT id, user_id, quantity, status, idempotency_key, expires_at FROM orders "
            "WHERE drop_id = ?"
        )
        shards = await asyncio.gather(
            *(
                self._db.shard(index).fetch_all(query, (drop_id,))
                for index in range(self._db.shard_count)
            )
        )
        return [
            LedgerLine(row[0], row[1], int(row[2]), OrderStatus(row[3]), row[4], float(row[5]))
            for rows in shards
            for row in rows
        ]

    async def stale_pending(self, before: float, limit: int = 1000) -> list[tuple[str, str, str]]:
        """(drop id, order id, user id) of pending orders whose hold lapsed before `before`."""
        query = (
            "SELECT drop_id, id, user_id FROM orders WHERE status = 'pending_payment' "
            "AND expires_at < ? LIMIT ?"
        )
        shards = await asyncio.gather(
            *(
                self._db.shard(index).fetch_all(query, (before, limit))
                for index in range(self._db.shard_count)
            )
        )
        return [(row[0], row[1], row[2]) for rows in shards for row in rows]
