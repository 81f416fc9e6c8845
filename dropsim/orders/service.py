"""Order use cases: place an order (idempotent, atomic), settle it on a payment outcome, expire it.

The order path, in the order DESIGN.md fixes: idempotency claim + reservation in one Lua call,
then the order row, then the payment hand-off. Settlement follows whichever of commit / release
won in Redis (each reservation is committed or released exactly once), so callbacks that come
twice, late, or out of order, timeouts and the reaper can race without double counting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Protocol

import msgspec

from dropsim.creators.models import Drop
from dropsim.creators.service import CreatorService
from dropsim.errors import Conflict, InvalidRequest, NotFound, Unprocessable
from dropsim.eventlog import EventLog
from dropsim.events import Event, OrderConfirmed, OrderExpired, OrderFailed, OrderReserved
from dropsim.gateway.tokens import Principal
from dropsim.ids import new_id
from dropsim.metrics import IDEMPOTENT_REPLAYS, ORDERS
from dropsim.orders import idempotency
from dropsim.orders.idempotency import IdempotencyRecords
from dropsim.orders.inventory import Counters, Inventory, Reserved
from dropsim.orders.models import Order, OrderStatus, Rejection
from dropsim.orders.reconcile import Reconciler
from dropsim.orders.store import OrderStore
from dropsim.timeutil import to_datetime

logger = logging.getLogger("dropsim.orders")

SOLD_OUT_RECHECK_SECONDS = 0.25
"""How long this process trusts its sold-out flag before asking Redis again (a unit released
by another process is noticed within this; one released here clears the flag at once)."""
DROP_TERMS_SECONDS = 1.0
VIEWER_ORDERS_LIMIT = 100
"""Most orders of one drop shown to one buyer (the per-user limit keeps real counts far below)."""

# label children bound once: the order path pays one locked add per outcome, no label lookup
_RESERVED = ORDERS.labels("reserved")
_SETTLED = {
    OrderStatus.CONFIRMED: ORDERS.labels("confirmed"),
    OrderStatus.FAILED: ORDERS.labels("failed"),
    OrderStatus.EXPIRED: ORDERS.labels("expired"),
}
_REFUSED = {rejection: ORDERS.labels(f"refused_{rejection.value}") for rejection in Rejection}


class PaymentRequester(Protocol):
    """The payment service as the order service sees it."""

    async def request_payment(self, order: Order) -> None:
        """Start charging for `order`; the outcome arrives later through `OrderService.settle`."""


class Settlement(StrEnum):
    CONFIRMED = "confirmed"
    ALREADY_CONFIRMED = "already_confirmed"
    RELEASED = "released"
    ALREADY_SETTLED = "already_settled"
    REFUND = "refund"
    """The payment succeeded but the unit had gone back (expired): the money must be returned."""


@dataclass(frozen=True, slots=True)
class PlacedOrder:
    """A response the order route returns and, for a repeat, replays byte for byte."""

    status: int
    order: Order | None = None
    rejection: Rejection | None = None
    replayed: bool = False
    stored_body: str | None = None
    """The exact body stored with the key (set on replays of a created order)."""


class OrderService:
    def __init__(
        self,
        store: OrderStore,
        inventory: Inventory,
        records: IdempotencyRecords,
        catalog: CreatorService,
        reconciler: Reconciler,
        events: EventLog,
        *,
        hold_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._inventory = inventory
        self._records = records
        self._catalog = catalog
        self._reconciler = reconciler
        self._events = events
        self._hold = hold_seconds
        self._clock = clock
        self._payments: PaymentRequester | None = None
        self._sold_out_at: dict[str, float] = {}
        self._terms: dict[str, tuple[float, Drop]] = {}

    def connect_payments(self, payments: PaymentRequester) -> None:
        self._payments = payments

    # the catalog tells us about drops (creators.DropListener)
    async def drop_scheduled(self, drop: Drop) -> None:
        await self._prepare(drop)

    async def drop_changed(self, drop: Drop) -> None:
        self._terms.pop(drop.id, None)
        await self._prepare(drop)

    async def drop_cancelled(self, drop: Drop) -> None:
        await self._inventory.close(drop.id)

    async def _prepare(self, drop: Drop) -> None:
        await self._inventory.prepare(
            drop.id,
            stock=drop.stock,
            limit=drop.per_user_limit,
            starts_ms=int(drop.starts_at.timestamp() * 1000),
            ends_ms=int(drop.ends_at.timestamp() * 1000),
        )

    # placing
    async def place_order(
        self,
        principal: Principal,
        drop_id: str,
        key: str | None,
        quantity: int,
        fingerprint: str,
    ) -> PlacedOrder:
        """Reserve and record an order once per idempotency key (see module docstring)."""
        if not key:
            raise InvalidRequest(
                "send an Idempotency-Key header (a fresh UUID per purchase)",
                code="idempotency_key_missing",
            )
        if len(key) > idempotency.MAX_KEY_LENGTH:
            raise InvalidRequest(
                "Idempotency-Key is longer than 255 characters", code="idempotency_key_invalid"
            )
        drop = await self._drop_terms(drop_id)
        user_id = principal.user_id
        if self._known_sold_out(drop_id):
            stored = await self._records.lookup(user_id, key)
            if stored is None:
                _REFUSED[Rejection.SOLD_OUT].inc()
                return PlacedOrder(409, rejection=Rejection.SOLD_OUT)
            return self._repeat(
                stored.fingerprint == fingerprint, stored.running, stored.status, stored.body
            )
        now = self._clock()
        order_id = new_id("ord")
        for attempt in range(2):
            decision = await self._inventory.reserve(
                idempotency_key=idempotency.record_key(user_id, key),
                fingerprint=fingerprint,
                drop_id=drop_id,
                order_id=order_id,
                user_id=user_id,
                quantity=quantity,
                now_ms=int(now * 1000),
                hold_ms=int(self._hold * 1000),
                running_ttl_s=idempotency.RUNNING_SECONDS,
                done_ttl_s=idempotency.KEPT_SECONDS,
            )
            if decision.outcome is not Reserved.UNPREPARED:
                break
            if attempt == 0:
                await self._reconciler.rebuild(
                    await self._catalog.fresh_drop(drop_id), only_if_missing=True
                )
        else:
            raise Conflict(
                "this drop's inventory is being rebuilt; retry shortly",
                code="inventory_unavailable",
            )
        if decision.outcome is Reserved.REJECTED:
            assert decision.rejection is not None
            if decision.rejection is Rejection.SOLD_OUT and quantity == 1:
                # (asking for more units than are left is "sold out" for that request only)
                self._sold_out_at[drop_id] = time.monotonic()
            _REFUSED[decision.rejection].inc()
            return PlacedOrder(409, rejection=decision.rejection)
        if decision.outcome is not Reserved.RESERVED:
            return self._repeat(
                decision.outcome is not Reserved.MISMATCH,
                decision.outcome is Reserved.IN_FLIGHT,
                decision.stored_status,
                decision.stored_body,
            )
        order = Order(
            id=order_id,
            user_id=user_id,
            drop_id=drop_id,
            quantity=quantity,
            amount_cents=drop.price_cents * quantity,
            idempotency_key=key,
            status=OrderStatus.PENDING_PAYMENT,
            created_at=to_datetime(now),
            updated_at=to_datetime(now),
            expires_at=to_datetime(now) + timedelta(seconds=self._hold),
        )
        try:
            await self._store.insert(order)
        except BaseException:
            await self._inventory.release(drop_id, order_id, user_id)
            await self._records.forget(user_id, key)
            raise
        _RESERVED.inc()
        await self._records.finish(user_id, key, 201, msgspec.json.encode(order).decode())
        available = decision.available or 0
        if available == 0:
            self._sold_out_at[drop_id] = time.monotonic()
            await self._catalog.mark_sold_out(drop_id)
        await self._publish(
            OrderReserved(
                order_id=order_id,
                user_id=user_id,
                drop_id=drop_id,
                quantity=quantity,
                available=available,
            )
        )
        if self._payments is not None:
            await self._payments.request_payment(order)
        return PlacedOrder(201, order=order)

    def _repeat(
        self, same_request: bool, running: bool, status: int | None, body: str | None
    ) -> PlacedOrder:
        if not same_request:
            raise Unprocessable(
                "this Idempotency-Key was used for a different request",
                code="idempotency_key_reused",
            )
        if running or status is None or body is None:
            raise Conflict(
                "a request with this Idempotency-Key is still being processed; retry shortly",
                code="idempotency_key_in_flight",
            )
        IDEMPOTENT_REPLAYS.inc()
        if body.startswith("problem:"):
            return PlacedOrder(
                status, rejection=Rejection(body.removeprefix("problem:")), replayed=True
            )
        return PlacedOrder(status, replayed=True, stored_body=body)

    def _known_sold_out(self, drop_id: str) -> bool:
        flagged = self._sold_out_at.get(drop_id)
        if flagged is None:
            return False
        if time.monotonic() - flagged < SOLD_OUT_RECHECK_SECONDS:
            return True
        del self._sold_out_at[drop_id]
        return False

    async def _drop_terms(self, drop_id: str) -> Drop:
        """The drop's price and limits; they are frozen once it is live, so a second is fresh."""
        cached = self._terms.get(drop_id)
        if cached is not None and time.monotonic() - cached[0] < DROP_TERMS_SECONDS:
            return cached[1]
        drop = await self._catalog.drop(drop_id)  # NotFound for an unknown drop
        self._terms[drop_id] = (time.monotonic(), drop)
        return drop

    # reading
    async def order(self, principal: Principal, order_id: str) -> Order:
        found = await self._store.order(principal.user_id, order_id)
        if found is None:
            raise NotFound(f"no order {order_id}", code="order_not_found")
        return found

    async def orders(self, principal: Principal, after: str, limit: int) -> list[Order]:
        return await self._store.orders_of_user(principal.user_id, after, limit)

    async def orders_for_drop(self, user_id: str, drop_id: str) -> list[Order]:
        """`user_id`'s orders of one drop, oldest first (at most `VIEWER_ORDERS_LIMIT`)."""
        return await self._store.orders_of_user_for_drop(user_id, drop_id, VIEWER_ORDERS_LIMIT)

    async def live_stock(self, drop_id: str) -> Counters | None:
        """The drop's inventory counters as the gate holds them right now (one atomic read,
        never cached); None when the drop has no counters."""
        return await self._inventory.counters(drop_id)

    # settling
    async def settle(
        self, order_id: str, user_id: str, drop_id: str, *, succeeded: bool, reason: str = ""
    ) -> Settlement:
        """Apply a payment outcome. Safe to call any number of times, in any order."""
        now = self._clock()
        if succeeded:
            committed = await self._inventory.commit(drop_id, order_id, user_id)
            if committed == 0:
                # the hold lapsed or a failure released it first: the unit is someone else's now
                await self._store.move(
                    user_id, order_id, [OrderStatus.PENDING_PAYMENT], OrderStatus.EXPIRED, now
                )
                return Settlement.REFUND
            moved = await self._store.move(
                user_id, order_id, [OrderStatus.PENDING_PAYMENT], OrderStatus.CONFIRMED, now
            )
            if moved:
                _SETTLED[OrderStatus.CONFIRMED].inc()
                await self._publish(
                    OrderConfirmed(order_id=order_id, user_id=user_id, drop_id=drop_id)
                )
                return Settlement.CONFIRMED
            return Settlement.ALREADY_CONFIRMED
        return await self._release(order_id, user_id, drop_id, OrderStatus.FAILED, reason, now)

    async def expire(self, order_id: str, user_id: str, drop_id: str) -> Settlement:
        """Release a reservation whose hold lapsed (the reaper calls this)."""
        return await self._release(
            order_id, user_id, drop_id, OrderStatus.EXPIRED, "expired", self._clock()
        )

    async def expire_lapsed(self, now_ms: int) -> int:
        """Release every reservation whose hold lapsed before `now_ms`; return how many."""
        released = 0
        for drop_id, order_id, user_id in await self._inventory.expired(now_ms):
            if await self.expire(order_id, user_id, drop_id) is Settlement.RELEASED:
                released += 1
        return released

    async def resolve_stale_pending(self, grace_seconds: float = 30.0) -> int:
        """Settle pending orders left behind by a crash between Redis and SQL.

        An order still pending well after its hold lapsed has no reservation any more: if its
        unit was committed it is confirmed, otherwise it expired.
        """
        resolved = 0
        now = self._clock()
        for drop_id, order_id, user_id in await self._store.stale_pending(now - grace_seconds):
            settlement = await self.expire(order_id, user_id, drop_id)
            if settlement is Settlement.RELEASED:
                resolved += 1
                continue
            target = (
                OrderStatus.CONFIRMED
                if await self._inventory.is_committed(drop_id, order_id)
                else OrderStatus.EXPIRED
            )
            if await self._store.move(
                user_id, order_id, [OrderStatus.PENDING_PAYMENT], target, now
            ):
                _SETTLED[target].inc()
                resolved += 1
        return resolved

    async def _release(
        self,
        order_id: str,
        user_id: str,
        drop_id: str,
        target: OrderStatus,
        reason: str,
        now: float,
    ) -> Settlement:
        released, available = await self._inventory.release(drop_id, order_id, user_id)
        if not released:
            return Settlement.ALREADY_SETTLED  # committed or released before: SQL follows that
        self._sold_out_at.pop(drop_id, None)
        # counted on the SQL move, the one step that happens once per order even when a crash
        # between release and move leaves the move to `resolve_stale_pending`
        if await self._store.move(user_id, order_id, [OrderStatus.PENDING_PAYMENT], target, now):
            _SETTLED[target].inc()
        if available > 0:
            await self._catalog.mark_back_on_sale(drop_id)
        event: Event = (
            OrderExpired(order_id=order_id, user_id=user_id, drop_id=drop_id)
            if target is OrderStatus.EXPIRED
            else OrderFailed(order_id=order_id, user_id=user_id, drop_id=drop_id, reason=reason)
        )
        await self._publish(event)
        return Settlement.RELEASED

    async def _publish(self, event: Event) -> None:
        await self._events.publish(event)
