"""API composition: one drop page gathered concurrently from the services that own its parts.

Stock and the viewer's orders need only the drop id, so they start beside the drop itself;
product, creator and follow state need the drop's ids and start as soon as it arrives. Every part
has its own timeout. A part that fails or times out leaves a null and an entry in `errors`, never
a failed page. Only the drop is required: an unknown drop is NotFound (404), and a drop that
cannot be read at all is `DropUnavailable` (503), since without it the gateway cannot even tell
whether the page exists.

Reads go through each service's interface: drop, product and creator are cache-aside in the
catalog; follow state and orders come from their services; stock is read from the inventory
counters at request time and never cached (it changes thousands of times a second in a rush).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import msgspec

from dropsim.creators.models import Creator, Drop, Product
from dropsim.creators.service import CreatorService
from dropsim.errors import DomainError, NotFound
from dropsim.follows.service import FollowService
from dropsim.orders.models import Order
from dropsim.orders.service import OrderService

logger = logging.getLogger("dropsim.gateway")

T = TypeVar("T")

PART_TIMEOUT_SECONDS = 1.0
"""Longest one part may take before the page goes out without it."""


class DropUnavailable(DomainError):
    status, code, title = 503, "drop_unavailable", "Service unavailable"


class LiveStock(msgspec.Struct, frozen=True):
    """The drop's inventory at the moment of the request: available + reserved + sold == stock."""

    stock: int
    available: int
    reserved: int
    sold: int


class Viewer(msgspec.Struct, frozen=True):
    """What the signed-in viewer has to do with this drop (a null field: that part failed)."""

    user_id: str
    follows_creator: bool | None
    orders: list[Order] | None
    """The viewer's orders of this drop, oldest first, each with its status."""


class PartError(msgspec.Struct, frozen=True):
    """A part of the page that is missing, and why."""

    part: str
    """One of: product, creator, stock, follow, orders."""
    detail: str


class DropPage(msgspec.Struct, frozen=True):
    """Everything a drop page shows, in one response; `viewer` is null for anonymous callers."""

    drop: Drop
    product: Product | None
    creator: Creator | None
    stock: LiveStock | None
    viewer: Viewer | None
    errors: list[PartError]


class DropPageComposer:
    """Builds `DropPage`s from the catalog, follow and order services."""

    def __init__(
        self,
        catalog: CreatorService,
        follows: FollowService,
        orders: OrderService,
        *,
        part_timeout: float = PART_TIMEOUT_SECONDS,
    ) -> None:
        self._catalog = catalog
        self._follows = follows
        self._orders = orders
        self.part_timeout = part_timeout

    async def page(self, drop_id: str, viewer_id: str | None) -> DropPage:
        """The drop's page as `viewer_id` (None: anonymous) sees it."""
        errors: list[PartError] = []
        failure: DomainError | None = None
        async with asyncio.TaskGroup() as group:
            stock = group.create_task(self._part("stock", partial(self._stock, drop_id), errors))
            orders = group.create_task(
                _nothing()
                if viewer_id is None
                else self._part(
                    "orders", partial(self._orders.orders_for_drop, viewer_id, drop_id), errors
                )
            )
            product = creator = follows = None
            try:
                drop = await self._drop(drop_id)
            except DomainError as exc:
                # raised outside the group, which would wrap it in an ExceptionGroup
                failure = exc
                stock.cancel()
                orders.cancel()
            else:
                product = group.create_task(
                    self._part("product", partial(self._catalog.product, drop.product_id), errors)
                )
                creator = group.create_task(
                    self._part("creator", partial(self._catalog.creator, drop.creator_id), errors)
                )
                follows = group.create_task(
                    _nothing()
                    if viewer_id is None
                    else self._part(
                        "follow",
                        partial(self._follows.is_following, viewer_id, drop.creator_id),
                        errors,
                    )
                )
        if failure is not None:
            raise failure
        # (the drop was read, so its dependent parts were started)
        assert product is not None
        assert creator is not None
        assert follows is not None
        viewer = None
        if viewer_id is not None:
            viewer = Viewer(
                user_id=viewer_id, follows_creator=follows.result(), orders=orders.result()
            )
        return DropPage(
            drop=drop,
            product=product.result(),
            creator=creator.result(),
            stock=stock.result(),
            viewer=viewer,
            errors=sorted(errors, key=lambda error: error.part),
        )

    async def _drop(self, drop_id: str) -> Drop:
        try:
            async with asyncio.timeout(self.part_timeout):
                return await self._catalog.drop(drop_id)
        except DomainError:
            raise
        except Exception as exc:
            logger.warning("drop page: the drop %s could not be read", drop_id, exc_info=exc)
            raise DropUnavailable(
                f"the drop cannot be read right now ({_reason(exc, self.part_timeout)}); "
                "retry shortly"
            ) from None

    async def _stock(self, drop_id: str) -> LiveStock:
        counters = await self._orders.live_stock(drop_id)
        if counters is None:
            raise NotFound("this drop has no inventory counters yet", code="stock_not_found")
        return LiveStock(
            stock=counters.stock,
            available=counters.available,
            reserved=counters.reserved,
            sold=counters.sold,
        )

    async def _part(
        self, name: str, work: Callable[[], Awaitable[T]], errors: list[PartError]
    ) -> T | None:
        """`work()`'s result, or None with an entry in `errors` if it failed or took too long.

        `work` is called here, not by the caller, so a part cancelled before it starts leaves
        no coroutine behind that was never awaited."""
        try:
            async with asyncio.timeout(self.part_timeout):
                return await work()
        except DomainError as exc:
            errors.append(PartError(part=name, detail=exc.detail))
        except Exception as exc:
            logger.warning("drop page: part %s failed", name, exc_info=exc)
            errors.append(
                PartError(part=name, detail=f"unavailable ({_reason(exc, self.part_timeout)})")
            )
        return None


def _reason(exc: Exception, timeout: float) -> str:
    # the exception's type, not its message: messages can carry hosts or queries
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return type(exc).__name__


async def _nothing() -> None:
    """The part an anonymous viewer does not have."""
