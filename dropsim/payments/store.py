"""Payment tables: `payments` sharded by user id, `payment_callbacks` by provider event id."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from dropsim.group_commit import GroupWriter
from dropsim.payments.models import Payment, PaymentStatus
from dropsim.ports import Migration, Row, ShardedDatabase
from dropsim.timeutil import to_datetime

MIGRATIONS = (
    Migration(
        "payments-001",
        (
            "CREATE TABLE IF NOT EXISTS payments (id TEXT PRIMARY KEY, "
            "order_id TEXT NOT NULL UNIQUE, user_id TEXT NOT NULL, drop_id TEXT NOT NULL, "
            "amount_cents BIGINT NOT NULL, idempotency_key TEXT NOT NULL, status TEXT NOT NULL, "
            "provider_charge_id TEXT, failure_reason TEXT NOT NULL DEFAULT '', "
            "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS payments_by_drop ON payments (drop_id, status)",
            "CREATE TABLE IF NOT EXISTS payment_callbacks (event_id TEXT PRIMARY KEY, "
            "received_at DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        "payments-002",
        (
            "CREATE INDEX IF NOT EXISTS payment_callbacks_by_time "
            "ON payment_callbacks (received_at)",
        ),
    ),
    Migration(
        "payments-003",
        ("CREATE INDEX IF NOT EXISTS payments_by_status ON payments (status, updated_at)",),
    ),
)

_COLUMNS = (
    "id, order_id, user_id, drop_id, amount_cents, idempotency_key, status, provider_charge_id, "
    "failure_reason, created_at, updated_at"
)


def _payment(row: Row) -> Payment:
    return Payment(
        id=row[0],
        order_id=row[1],
        user_id=row[2],
        drop_id=row[3],
        amount_cents=int(row[4]),
        idempotency_key=row[5],
        status=PaymentStatus(row[6]),
        provider_charge_id=row[7],
        failure_reason=row[8],
        created_at=to_datetime(row[9]),
        updated_at=to_datetime(row[10]),
    )


_INSERT = f"INSERT INTO payments ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ACCEPT = (
    f"UPDATE payments SET status = '{PaymentStatus.PENDING.value}', updated_at = ?, "
    "provider_charge_id = COALESCE(provider_charge_id, ?) "
    f"WHERE id = ? AND user_id = ? AND status = '{PaymentStatus.REQUESTED.value}'"
)


class PaymentStore:
    def __init__(self, db: ShardedDatabase) -> None:
        self._db = db
        self._inserts = GroupWriter(db, _INSERT)
        self._accepts = GroupWriter(db, _ACCEPT)

    async def insert(self, payment: Payment) -> bool:
        """Record a new payment (concurrent inserts on a shard share one transaction); False if
        its order has one already (nothing is changed)."""
        try:
            await self._inserts.write(
                self._db.shard_of(payment.user_id),
                (
                    payment.id,
                    payment.order_id,
                    payment.user_id,
                    payment.drop_id,
                    payment.amount_cents,
                    payment.idempotency_key,
                    payment.status.value,
                    payment.provider_charge_id,
                    payment.failure_reason,
                    payment.created_at.timestamp(),
                    payment.updated_at.timestamp(),
                ),
            )
        except Exception:
            # the driver's unique-violation error differs by backend: ask the table instead
            existing = await self.payment_of_order(payment.user_id, payment.order_id)
            if existing is not None and existing.id != payment.id:
                return False
            raise
        return True

    async def accept(self, user_id: str, payment_id: str, charge_id: str, now: float) -> None:
        """Move a `requested` payment to `pending` with the provider's charge id (concurrent
        acceptances on a shard share one transaction). A payment that moved on already (a
        callback overtook the provider's answer) is left as it is, and no count says so."""
        await self._accepts.write(self._db.shard_of(user_id), (now, charge_id, payment_id, user_id))

    async def payment_of_order(self, user_id: str, order_id: str) -> Payment | None:
        row = await self._db.shard(self._db.shard_of(user_id)).fetch_one(
            f"SELECT {_COLUMNS} FROM payments WHERE order_id = ? AND user_id = ?",
            (order_id, user_id),
        )
        return None if row is None else _payment(row)

    async def move(
        self,
        user_id: str,
        payment_id: str,
        expected: Sequence[PaymentStatus],
        target: PaymentStatus,
        now: float,
        *,
        charge_id: str | None = None,
        reason: str | None = None,
    ) -> bool:
        """Compare-and-set the status (True only for the caller that made the move); a known
        charge id is kept, a `reason` replaces the failure reason."""
        marks = ", ".join("?" for _ in expected)
        changed = await self._db.shard(self._db.shard_of(user_id)).execute(
            "UPDATE payments SET status = ?, updated_at = ?, "
            "provider_charge_id = COALESCE(provider_charge_id, ?), "
            "failure_reason = COALESCE(?, failure_reason) "
            f"WHERE id = ? AND user_id = ? AND status IN ({marks})",
            (
                target.value,
                now,
                charge_id,
                reason,
                payment_id,
                user_id,
                *(status.value for status in expected),
            ),
        )
        return changed == 1

    async def claim_callback(self, event_id: str, now: float) -> bool:
        """Record a provider event as being processed; False if it was seen before."""
        changed = await self._db.shard(self._db.shard_of(event_id)).execute(
            "INSERT INTO payment_callbacks (event_id, received_at) VALUES (?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (event_id, now),
        )
        return changed == 1

    async def forget_callback(self, event_id: str) -> None:
        """Undo a claim whose processing failed, so the provider's redelivery is processed."""
        await self._db.shard(self._db.shard_of(event_id)).execute(
            "DELETE FROM payment_callbacks WHERE event_id = ?", (event_id,)
        )

    async def prune_callbacks(self, received_before: float) -> int:
        """Forget provider events received before `received_before`; return how many."""
        pruned = await asyncio.gather(
            *(
                self._db.shard(index).execute(
                    "DELETE FROM payment_callbacks WHERE received_at < ?", (received_before,)
                )
                for index in range(self._db.shard_count)
            )
        )
        return sum(pruned)

    async def payments_of_drop(self, drop_id: str) -> list[Payment]:
        """Every payment for a drop, from every shard."""
        return [
            _payment(row)
            for row in await self._everywhere(
                f"SELECT {_COLUMNS} FROM payments WHERE drop_id = ?", (drop_id,)
            )
        ]

    async def succeeded_payments(self, drop_id: str) -> list[tuple[str, str, str]]:
        """(payment id, order id, user id) of a drop's payments in status `succeeded`."""
        rows = await self._everywhere(
            "SELECT id, order_id, user_id FROM payments WHERE drop_id = ? AND status = ?",
            (drop_id, PaymentStatus.SUCCEEDED.value),
        )
        return [(row[0], row[1], row[2]) for row in rows]

    async def unfinished(self, updated_before: float) -> list[Payment]:
        """Payments still `requested` or `pending` that last changed before `updated_before`."""
        rows = await self._everywhere(
            f"SELECT {_COLUMNS} FROM payments WHERE status IN (?, ?) AND updated_at < ?",
            (PaymentStatus.REQUESTED.value, PaymentStatus.PENDING.value, updated_before),
        )
        return [_payment(row) for row in rows]

    async def succeeded_since(self, updated_after: float) -> list[Payment]:
        """Payments that reached `succeeded` (and stayed there) after `updated_after`."""
        rows = await self._everywhere(
            f"SELECT {_COLUMNS} FROM payments WHERE status = ? AND updated_at >= ?",
            (PaymentStatus.SUCCEEDED.value, updated_after),
        )
        return [_payment(row) for row in rows]

    async def _everywhere(self, query: str, params: Sequence[object]) -> list[Row]:
        shards = await asyncio.gather(
            *(
                self._db.shard(index).fetch_all(query, params)
                for index in range(self._db.shard_count)
            )
        )
        return [row for rows in shards for row in rows]
