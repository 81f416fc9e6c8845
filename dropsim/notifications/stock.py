"""Coalesced stock updates: a rush moves stock thousands of times a second, so each watched drop
gets at most one `drop.stock` frame per interval, read fresh from the inventory."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from dropsim.background import BackgroundTask
from dropsim.metrics import EVENTS_DELIVERED
from dropsim.notifications.frames import Frame, event_frame
from dropsim.notifications.hub import Hub

logger = logging.getLogger("dropsim.notifications")

STOCK_EVENT = "drop.stock"


class StockLevel(Protocol):
    @property
    def stock(self) -> int: ...
    @property
    def available(self) -> int: ...
    @property
    def reserved(self) -> int: ...
    @property
    def sold(self) -> int: ...


StockReader = Callable[[str], Awaitable[StockLevel | None]]
"""The order service's live counters of a drop (never a cached copy)."""


class StockUpdates(BackgroundTask):
    """Marks drops whose stock moved; every `interval_seconds` sends watchers the level now."""

    name = "stock-updates"

    def __init__(self, hub: Hub, read_stock: StockReader, *, interval_seconds: float) -> None:
        super().__init__()
        self._hub = hub
        self._read_stock = read_stock
        self._interval = interval_seconds
        self._moved: set[str] = set()

    def mark(self, drop_id: str) -> None:
        if drop_id and self._hub.watchers(drop_id):
            self._moved.add(drop_id)

    async def snapshot(self, drop_id: str, event_id: str) -> Frame | None:
        """The current level of one drop as a frame (what a new watcher sees first)."""
        level = await self._read_stock(drop_id)
        if level is None:
            return None
        return _stock_frame(drop_id, level, event_id)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            moved, self._moved = self._moved, set()
            for drop_id in moved:
                try:
                    await self._send(drop_id)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("stock update for drop %s failed", drop_id)

    async def _send(self, drop_id: str) -> None:
        level = await self._read_stock(drop_id)
        watchers = self._hub.watchers(drop_id)
        if level is None or not watchers:
            return
        # the hub's position now: every log event up to it is already queued to these streams,
        # so a client resuming from this id misses nothing
        frame = _stock_frame(drop_id, level, self._hub.position)
        for subscriber in watchers:
            subscriber.push(frame)
        EVENTS_DELIVERED.labels(STOCK_EVENT).inc(len(watchers))


def _stock_frame(drop_id: str, level: StockLevel, event_id: str) -> Frame:
    data = (
        f'{{"drop_id":{json.dumps(drop_id)},"available":{level.available},"reserved":{level.reserved},'
        f'"sold":{level.sold},"stock":{level.stock}}}'
    )
    return event_frame(event_id, STOCK_EVENT, time.time(), data)
