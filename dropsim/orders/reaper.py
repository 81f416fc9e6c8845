"""The reaper: puts back units whose hold lapsed, by polling (never keyspace notifications,
which Redis drops when no one listens and fakeredis does not send at all)."""

from __future__ import annotations

import asyncio
import logging
import time

from dropsim.background import BackgroundTask
from dropsim.orders.service import OrderService

logger = logging.getLogger("dropsim.reaper")

LEDGER_SWEEP_EVERY = 20
"""Every this many ticks, also look in SQL for pending orders that lost their reservation."""


class Reaper(BackgroundTask):
    name = "reservation-reaper"

    def __init__(self, orders: OrderService, *, interval_seconds: float = 0.5) -> None:
        super().__init__()
        self._orders = orders
        self._interval = interval_seconds

    async def _run(self) -> None:
        tick = 0
        while True:
            try:
                await self._orders.expire_lapsed(int(time.time() * 1000))
                if tick % LEDGER_SWEEP_EVERY == 0:
                    await self._orders.resolve_stale_pending()
            except Exception:
                logger.exception("reaper tick failed; trying again")
            tick += 1
            await asyncio.sleep(self._interval)
