"""Reconciliation: "Redis is the gate, SQL is the truth". Rebuild a drop's counters from the ledger.

Runs at start-up (for every drop when the KV store is embedded and so starts empty; for drops
whose counters are missing otherwise), when the order path finds a drop without counters, and on
`dropsim reconcile`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from dropsim.creators.models import Drop, DropStatus
from dropsim.creators.service import CreatorService
from dropsim.orders.audit import PaymentLedger
from dropsim.orders.inventory import Inventory
from dropsim.orders.models import OrderStatus
from dropsim.orders.store import OrderStore

PAGE = 500


@dataclass(frozen=True, slots=True)
class Rebuilt:
    drop_id: str
    stock: int
    sold: int
    reserved: int
    expired: int
    """Pending orders whose hold had lapsed: marked expired in SQL, their units back on sale."""


class Reconciler:
    def __init__(
        self,
        store: OrderStore,
        inventory: Inventory,
        catalog: CreatorService,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._inventory = inventory
        self._catalog = catalog
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._payments: PaymentLedger | None = None

    def connect_payments(self, payments: PaymentLedger) -> None:
        """Let rebuilds see which orders were paid (a crash can fall between the payment's
        success and the order's confirmation: such an order is confirmed, not expired)."""
        self._payments = payments

    async def rebuild(self, drop: Drop, *, only_if_missing: bool = False) -> Rebuilt | None:
        """Replace the drop's counters with what the ledger says (one at a time per drop);
        None when `only_if_missing` and they exist (another process rebuilt them first)."""
        lock = self._locks.setdefault(drop.id, asyncio.Lock())
        async with lock:
            if only_if_missing and await self._inventory.exists(drop.id):
                return None
            now = self._clock()
            confirmed: dict[str, tuple[str, int]] = {}
            reserved: dict[str, tuple[str, int, int]] = {}
            expired = 0
            paid: set[str] = set()
            if self._payments is not None:
                paid = {order for _, order, _ in await self._payments.succeeded_payments(drop.id)}
            for line in await self._store.ledger(drop.id):
                if line.status is OrderStatus.CONFIRMED:
                    confirmed[line.order_id] = (line.user_id, line.quantity)
                elif line.status is OrderStatus.PENDING_PAYMENT:
                    if line.order_id in paid or await self._inventory.is_committed(
                        drop.id, line.order_id
                    ):
                        # paid, or committed in Redis, and the process died before SQL caught
                        # up: the unit it held was never sold to anyone else
                        await self._store.move(
                            line.user_id,
                            line.order_id,
                            [OrderStatus.PENDING_PAYMENT],
                            OrderStatus.CONFIRMED,
                            now,
                        )
                        confirmed[line.order_id] = (line.user_id, line.quantity)
                    elif line.expires_at > now:
                        reserved[line.order_id] = (
                            line.user_id,
                            line.quantity,
                            int(line.expires_at * 1000),
                        )
                    else:
                        await self._store.move(
                            line.user_id,
                            line.order_id,
                            [OrderStatus.PENDING_PAYMENT],
                            OrderStatus.EXPIRED,
                            now,
                        )
                        expired += 1
            made = await self._inventory.rebuild(
                drop.id,
                stock=drop.stock,
                limit=drop.per_user_limit,
                starts_ms=int(drop.starts_at.timestamp() * 1000),
                ends_ms=int(drop.ends_at.timestamp() * 1000),
                closed=drop.status is DropStatus.CANCELLED,
                confirmed=confirmed,
                reserved=reserved,
                only_if_missing=only_if_missing,
            )
            if not made:
                return None
            return Rebuilt(
                drop.id,
                drop.stock,
                sum(q for _, q in confirmed.values()),
                sum(q for _, q, _ in reserved.values()),
                expired,
            )

    async def reconcile(
        self, *, only_missing: bool, drop_ids: list[str] | None = None
    ) -> list[Rebuilt]:
        """Rebuild the named drops, or every drop; with `only_missing`, only those without
        counters in Redis (safe while other processes sell: it never touches live counters)."""
        drops = (
            [await self._catalog.fresh_drop(drop_id) for drop_id in drop_ids]
            if drop_ids is not None
            else await self._all_drops()
        )
        done = []
        for drop in drops:
            rebuilt = await self.rebuild(drop, only_if_missing=only_missing)
            if rebuilt is not None:
                done.append(rebuilt)
        return done

    async def _all_drops(self) -> list[Drop]:
        found: list[Drop] = []
        after = ""
        while True:
            page = await self._catalog.drops(after=after, limit=PAGE)
            found.extend(page)
            if len(page) < PAGE:
                return found
            after = page[-1].id
