"""Creator use cases: become a creator, manage products and drops, move drops on the clock."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Protocol

from dropsim.accounts.models import Role
from dropsim.accounts.service import AccountService
from dropsim.cache import Cache
from dropsim.creators.models import Creator, Drop, DropStatus, Product, can_move, due_status
from dropsim.creators.store import CatalogStore
from dropsim.errors import Conflict, Forbidden, InvalidRequest, NotFound
from dropsim.eventlog import EventLog
from dropsim.events import (
    CreatorRegistered,
    DropBackOnSale,
    DropCancelled,
    DropEnded,
    DropScheduled,
    DropSoldOut,
    DropWentLive,
    Event,
    ProductCreated,
)
from dropsim.gateway.tokens import Principal
from dropsim.ids import new_id
from dropsim.timeutil import to_datetime

MAX_DROP_WINDOW = timedelta(days=30)


def creator_key(creator_id: str) -> str:
    return f"cache:creator:{creator_id}"


def product_key(product_id: str) -> str:
    return f"cache:product:{product_id}"


def drop_key(drop_id: str) -> str:
    return f"cache:drop:{drop_id}"


class DropListener(Protocol):
    """Told about drop changes in this process (the order service keeps its counters with it)."""

    async def drop_scheduled(self, drop: Drop) -> None: ...

    async def drop_changed(self, drop: Drop) -> None: ...

    async def drop_cancelled(self, drop: Drop) -> None: ...


class CreatorService:
    """The catalog. Reads go through the cache; every write invalidates what it changed."""

    def __init__(
        self,
        store: CatalogStore,
        accounts: AccountService,
        cache: Cache,
        events: EventLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._accounts = accounts
        self._cache = cache
        self._events = events
        self._clock = clock
        self._schedule_changed: Callable[[], None] = lambda: None
        self._listeners: list[DropListener] = []

    def add_listener(self, listener: DropListener) -> None:
        self._listeners.append(listener)

    def on_schedule_change(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever a drop's times change here (wakes the drop clock early)."""
        self._schedule_changed = callback

    # creators
    async def become_creator(
        self, principal: Principal, handle: str, display_name: str, bio: str
    ) -> Creator:
        """Make the signed-in user a creator; Conflict if they are one or the handle is taken."""
        if await self._store.creator(principal.user_id) is not None:
            raise Conflict("you are a creator already", code="already_creator")
        now = self._clock()
        if not await self._store.insert_creator(principal.user_id, handle, display_name, bio, now):
            raise Conflict(f"the handle {handle!r} is taken", code="handle_taken")
        if principal.role is not Role.ADMIN:
            await self._accounts.promote(principal.user_id, Role.CREATOR)
        await self._cache.invalidate(creator_key(principal.user_id))
        await self._publish(CreatorRegistered(creator_id=principal.user_id, handle=handle))
        return await self.creator(principal.user_id)

    async def creator(self, creator_id: str) -> Creator:
        found = await self._cache.get_or_load(
            creator_key(creator_id), lambda: self._store.creator(creator_id), Creator
        )
        if found is None:
            raise NotFound(f"no creator {creator_id}", code="creator_not_found")
        return found

    async def creator_by_handle(self, handle: str) -> Creator:
        found = await self._store.creator_by_handle(handle)
        if found is None:
            raise NotFound(f"no creator @{handle}", code="creator_not_found")
        return found

    async def creators(self, after: str, limit: int) -> list[Creator]:
        return await self._store.creators(after, limit)

    # products
    async def create_product(
        self, principal: Principal, name: str, description: str, image_url: str | None
    ) -> Product:
        await self.creator(principal.user_id)  # only creators have products
        now = self._clock()
        product = Product(
            id=new_id("prd"),
            creator_id=principal.user_id,
            name=name,
            description=description,
            image_url=image_url,
            created_at=to_datetime(now),
        )
        await self._store.insert_product(product, now)
        await self._publish(ProductCreated(product_id=product.id, creator_id=product.creator_id))
        return product

    async def product(self, product_id: str) -> Product:
        found = await self._cache.get_or_load(
            product_key(product_id), lambda: self._store.product(product_id), Product
        )
        if found is None:
            raise NotFound(f"no product {product_id}", code="product_not_found")
        return found

    async def products(self, creator_id: str, after: str, limit: int) -> list[Product]:
        return await self._store.products(creator_id, after, limit)

    async def update_product(
        self,
        principal: Principal,
        product_id: str,
        name: str | None,
        description: str | None,
        image_url: str | None,
    ) -> Product:
        product = await self._owned_product(principal, product_id)
        await self._store.update_product(
            product_id,
            name if name is not None else product.name,
            description if description is not None else product.description,
            image_url if image_url is not None else product.image_url,
        )
        await self._cache.invalidate(product_key(product_id))
        return await self.product(product_id)

    # drops
    async def schedule_drop(
        self,
        principal: Principal,
        product_id: str,
        *,
        stock: int,
        price_cents: int,
        per_user_limit: int,
        starts_at: datetime,
        ends_at: datetime,
    ) -> Drop:
        product = await self._owned_product(principal, product_id)
        _check_window(starts_at, ends_at, self._clock())
        now = to_datetime(self._clock())
        drop = Drop(
            id=new_id("drp"),
            creator_id=product.creator_id,
            product_id=product.id,
            stock=stock,
            price_cents=price_cents,
            per_user_limit=per_user_limit,
            starts_at=starts_at,
            ends_at=ends_at,
            status=DropStatus.SCHEDULED,
            created_at=now,
            updated_at=now,
        )
        await self._store.insert_drop(drop)
        for listener in self._listeners:
            await listener.drop_scheduled(drop)
        await self._publish(
            DropScheduled(
                drop_id=drop.id,
                creator_id=drop.creator_id,
                starts_at=starts_at.timestamp(),
                ends_at=ends_at.timestamp(),
            )
        )
        self._schedule_changed()
        return drop

    async def drop(self, drop_id: str) -> Drop:
        found = await self._cache.get_or_load(
            drop_key(drop_id), lambda: self._store.drop(drop_id), Drop
        )
        if found is None:
            raise NotFound(f"no drop {drop_id}", code="drop_not_found")
        return found

    async def fresh_drop(self, drop_id: str) -> Drop:
        """The drop as the catalog has it now, bypassing the cache (for decisions, not display)."""
        found = await self._store.drop(drop_id)
        if found is None:
            raise NotFound(f"no drop {drop_id}", code="drop_not_found")
        return found

    async def drops(
        self,
        *,
        after: str,
        limit: int,
        status: DropStatus | None = None,
        creator_id: str | None = None,
    ) -> list[Drop]:
        return await self._store.drops(
            after=after, limit=limit, status=status, creator_id=creator_id
        )

    async def started_drops(
        self, creator_ids: Sequence[str], *, before: float, limit: int
    ) -> list[Drop]:
        """Drops of these creators that have gone live, newest start first (for inboxes)."""
        return await self._store.started_drops(creator_ids, before, limit)

    async def reschedule_drop(
        self,
        principal: Principal,
        drop_id: str,
        *,
        stock: int | None = None,
        price_cents: int | None = None,
        per_user_limit: int | None = None,
        starts_at: datetime | None = None,
        ends_at: datetime | None = None,
    ) -> Drop:
        """Change a scheduled drop's terms; Conflict once it has gone live."""
        drop = await self._owned_drop(principal, drop_id)
        if drop.status is not DropStatus.SCHEDULED:
            raise Conflict(
                f"drop is {drop.status.value}; only scheduled drops change",
                code="drop_not_scheduled",
            )
        changed = Drop(
            id=drop.id,
            creator_id=drop.creator_id,
            product_id=drop.product_id,
            stock=drop.stock if stock is None else stock,
            price_cents=drop.price_cents if price_cents is None else price_cents,
            per_user_limit=drop.per_user_limit if per_user_limit is None else per_user_limit,
            starts_at=drop.starts_at if starts_at is None else starts_at,
            ends_at=drop.ends_at if ends_at is None else ends_at,
            status=drop.status,
            created_at=drop.created_at,
            updated_at=drop.updated_at,
        )
        _check_window(changed.starts_at, changed.ends_at, self._clock())
        if not await self._store.update_scheduled_drop(changed, self._clock()):
            raise Conflict(
                "drop went live meanwhile; it can no longer change", code="drop_not_scheduled"
            )
        await self._cache.invalidate(drop_key(drop_id))
        self._schedule_changed()
        updated = await self.fresh_drop(drop_id)
        for listener in self._listeners:
            await listener.drop_changed(updated)
        return updated

    async def cancel_drop(self, principal: Principal, drop_id: str) -> Drop:
        drop = await self._owned_drop(principal, drop_id)
        if not can_move(drop.status, DropStatus.CANCELLED) or not await self._store.move_drop(
            drop_id,
            [DropStatus.SCHEDULED, DropStatus.LIVE, DropStatus.SOLD_OUT],
            DropStatus.CANCELLED,
            self._clock(),
        ):
            raise Conflict(
                f"drop is {drop.status.value}; it can no longer be cancelled", code="drop_closed"
            )
        await self._cache.invalidate(drop_key(drop_id))
        cancelled = await self.fresh_drop(drop_id)
        for listener in self._listeners:
            await listener.drop_cancelled(cancelled)
        await self._publish(DropCancelled(drop_id=drop_id, creator_id=drop.creator_id))
        return cancelled

    async def advance_due_drops(self) -> list[tuple[str, DropStatus]]:
        """Move every drop whose time has come; return the moves this process made.

        Each move is a compare-and-set on the catalog row, so when several processes run the
        clock only one of them makes (and announces) each transition.
        """
        now = self._clock()
        made: list[tuple[str, DropStatus]] = []
        for drop in await self._store.due_drops(now):
            start, end = drop.starts_at.timestamp(), drop.ends_at.timestamp()
            target = due_status(drop.status, start, end, now)
            if target is drop.status or not can_move(drop.status, target):
                continue
            if not await self._store.move_drop(drop.id, [drop.status], target, now):
                continue  # another process moved it first
            await self._cache.invalidate(drop_key(drop.id))
            made.append((drop.id, target))
            if target is DropStatus.LIVE:
                await self._publish(
                    DropWentLive(
                        drop_id=drop.id,
                        creator_id=drop.creator_id,
                        product_id=drop.product_id,
                        stock=drop.stock,
                        price_cents=drop.price_cents,
                        starts_at=start,
                        ends_at=end,
                    )
                )
            else:
                await self._publish(DropEnded(drop_id=drop.id, creator_id=drop.creator_id))
        return made

    async def mark_sold_out(self, drop_id: str) -> bool:
        """The last unit is reserved: show the drop as sold out (once, whoever asks)."""
        moved = await self._store.move_drop(
            drop_id, [DropStatus.LIVE], DropStatus.SOLD_OUT, self._clock()
        )
        if moved:
            await self._cache.invalidate(drop_key(drop_id))
            drop = await self.fresh_drop(drop_id)
            await self._publish(DropSoldOut(drop_id=drop_id, creator_id=drop.creator_id))
        return moved

    async def mark_back_on_sale(self, drop_id: str) -> bool:
        """A unit came back (failed payment, lapsed hold) before the end: on sale again."""
        now = self._clock()
        drop = await self.fresh_drop(drop_id)
        if drop.status is not DropStatus.SOLD_OUT or drop.ends_at.timestamp() <= now:
            return False
        moved = await self._store.move_drop(drop_id, [DropStatus.SOLD_OUT], DropStatus.LIVE, now)
        if moved:
            await self._cache.invalidate(drop_key(drop_id))
            await self._publish(DropBackOnSale(drop_id=drop_id, creator_id=drop.creator_id))
        return moved

    async def next_due_at(self) -> float | None:
        return await self._store.next_due_at()

    # helpers
    async def _owned_product(self, principal: Principal, product_id: str) -> Product:
        product = await self.product(product_id)
        if product.creator_id != principal.user_id and not principal.is_admin:
            raise Forbidden("this product belongs to another creator", code="not_your_product")
        return product

    async def _owned_drop(self, principal: Principal, drop_id: str) -> Drop:
        drop = await self.fresh_drop(drop_id)
        if drop.creator_id != principal.user_id and not principal.is_admin:
            raise Forbidden("this drop belongs to another creator", code="not_your_drop")
        return drop

    async def _publish(self, event: Event) -> None:
        await self._events.publish(event)


def _check_window(starts_at: datetime, ends_at: datetime, now: float) -> None:
    if ends_at <= starts_at:
        raise InvalidRequest("ends_at must be after starts_at", code="invalid_window")
    if ends_at.timestamp() <= now:
        raise InvalidRequest("ends_at is in the past", code="invalid_window")
    if ends_at - starts_at > MAX_DROP_WINDOW:
        raise InvalidRequest("a drop lasts at most 30 days", code="invalid_window")
