"""Keeps the live-drop gauges (units available, units held by reservations) current for /metrics.

Prometheus collects synchronously while our reads are async, so a light loop reads the inventory
of every live drop once a second and swaps the snapshot in; a drop that stops being live leaves
the snapshot, and with it its series, on the next refresh.
"""

from __future__ import annotations

import asyncio
import logging

from dropsim.background import BackgroundTask
from dropsim.creators.models import DropStatus
from dropsim.creators.service import CreatorService
from dropsim.metrics import RESERVATIONS_LIVE, STOCK_AVAILABLE, LiveDropGauge
from dropsim.orders.service import OrderService

logger = logging.getLogger("dropsim.metrics")

LIVE_STATUSES = (DropStatus.LIVE, DropStatus.SOLD_OUT)
"""Drops whose window is open: a sold-out drop still holds reservations and may come back."""
PAGE_SIZE = 500


class StockGauges(BackgroundTask):
    """Refreshes `STOCK_AVAILABLE` and `RESERVATIONS_LIVE` every `interval_seconds`."""

    name = "stock-gauges"

    def __init__(
        self,
        catalog: CreatorService,
        orders: OrderService,
        *,
        interval_seconds: float = 1.0,
        available: LiveDropGauge = STOCK_AVAILABLE,
        reserved: LiveDropGauge = RESERVATIONS_LIVE,
    ) -> None:
        super().__init__()
        self._catalog = catalog
        self._orders = orders
        self._interval = interval_seconds
        self._available = available
        self._reserved = reserved

    async def refresh(self) -> None:
        """Read every live drop's counters and make them the gauges' whole content."""
        drop_ids = await self._live_drop_ids()
        counters = await asyncio.gather(*(self._orders.live_stock(d) for d in drop_ids))
        available: dict[str, float] = {}
        reserved: dict[str, float] = {}
        for drop_id, found in zip(drop_ids, counters, strict=True):
            if found is not None:  # no counters yet: the gauge says nothing rather than 0
                available[drop_id] = found.available
                reserved[drop_id] = found.reserved
        self._available.replace(available)
        self._reserved.replace(reserved)

    async def _live_drop_ids(self) -> list[str]:
        found: list[str] = []
        for status in LIVE_STATUSES:
            after = ""
            while True:
                page = await self._catalog.drops(after=after, limit=PAGE_SIZE, status=status)
                found.extend(drop.id for drop in page)
                if len(page) < PAGE_SIZE:
                    break
                after = page[-1].id
        return found

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:
                # a backend hiccup must not end the loop; the gauges keep their last snapshot
                logger.exception("refreshing the live-drop gauges failed; retrying")
            await asyncio.sleep(self._interval)
