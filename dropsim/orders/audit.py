"""The audit: does every invariant of DESIGN.md hold for a drop, right now?

available + reserved + sold == stock          (Redis counters balance)
sold == confirmed units in SQL                (the gate agrees with the ledger)
no user holds more than the per-user limit    (in Redis and in SQL)
one order per idempotency key                 (SQL)
every succeeded payment <-> exactly one confirmed order
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import msgspec

from dropsim.creators.service import CreatorService
from dropsim.orders.inventory import Inventory
from dropsim.orders.models import OrderStatus
from dropsim.orders.store import OrderStore


class PaymentLedger(Protocol):
    async def succeeded_payments(self, drop_id: str) -> list[tuple[str, str, str]]:
        """(payment id, order id, user id) of every payment of the drop that succeeded."""


class DropAudit(msgspec.Struct):
    drop_id: str
    stock: int
    available: int
    reserved: int
    sold: int
    confirmed_units_sql: int
    confirmed_orders_sql: int
    pending_orders_sql: int
    per_user_limit: int
    users_over_limit: list[str]
    duplicate_keys: list[str]
    orphan_payments: list[str]
    """Succeeded payments without exactly one confirmed order (or a confirmed order paid twice)."""
    unpaid_confirmed_orders: list[str]
    checks: dict[str, bool]
    ok: bool


class Auditor:
    def __init__(
        self,
        store: OrderStore,
        inventory: Inventory,
        catalog: CreatorService,
        payments: PaymentLedger | None = None,
    ) -> None:
        self._store = store
        self._inventory = inventory
        self._catalog = catalog
        self._payments = payments

    def connect_payments(self, payments: PaymentLedger) -> None:
        self._payments = payments

    async def audit(self, drop_id: str) -> DropAudit:
        drop = await self._catalog.fresh_drop(drop_id)
        counters = await self._inventory.counters(drop_id)
        holdings = await self._inventory.holdings(drop_id)
        ledger = await self._store.ledger(drop_id)

        confirmed = [line for line in ledger if line.status is OrderStatus.CONFIRMED]
        pending = [line for line in ledger if line.status is OrderStatus.PENDING_PAYMENT]
        confirmed_units = sum(line.quantity for line in confirmed)
        held_sql: Counter[str] = Counter()
        for line in (*confirmed, *pending):
            held_sql[line.user_id] += line.quantity
        over_limit = sorted(
            {user for user, units in held_sql.items() if units > drop.per_user_limit}
            | {user for user, units in holdings.items() if units > drop.per_user_limit}
        )
        keys = Counter((line.user_id, line.idempotency_key) for line in ledger)
        duplicates = sorted(f"{user}:{key}" for (user, key), count in keys.items() if count > 1)

        orphans: list[str] = []
        unpaid: list[str] = []
        if self._payments is not None:
            paid = await self._payments.succeeded_payments(drop_id)
            confirmed_ids = {line.order_id for line in confirmed}
            paid_orders = Counter(order_id for _, order_id, _ in paid)
            orphans = sorted(
                payment_id
                for payment_id, order_id, _ in paid
                if order_id not in confirmed_ids or paid_orders[order_id] > 1
            )
            unpaid = sorted(confirmed_ids - set(paid_orders))

        stock = counters.stock if counters else drop.stock
        available = counters.available if counters else 0
        reserved = counters.reserved if counters else 0
        sold = counters.sold if counters else 0
        checks = {
            "counters_present": counters is not None,
            "balanced": available + reserved + sold == stock and min(available, reserved) >= 0,
            "sold_matches_ledger": sold == confirmed_units,
            "never_oversold": confirmed_units <= drop.stock,
            "per_user_limit_respected": not over_limit,
            "one_order_per_key": not duplicates,
            "payments_match_orders": not orphans and (self._payments is None or not unpaid),
        }
        return DropAudit(
            drop_id=drop_id,
            stock=stock,
            available=available,
            reserved=reserved,
            sold=sold,
            confirmed_units_sql=confirmed_units,
            confirmed_orders_sql=len(confirmed),
            pending_orders_sql=len(pending),
            per_user_limit=drop.per_user_limit,
            users_over_limit=over_limit,
            duplicate_keys=duplicates,
            orphan_payments=orphans,
            unpaid_confirmed_orders=unpaid,
            checks=checks,
            ok=all(checks.values()),
        )
