"""The event feed: follows the event log (every process reads every event) and hands each event
to the local streams it concerns, encoded once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dropsim.background import BackgroundTask
from dropsim.eventlog import EventLog, LogEntry, id_key
from dropsim.events import CreatorFollowed, CreatorUnfollowed
from dropsim.metrics import EVENTS_DELIVERED, FANOUT_LAG
from dropsim.notifications.frames import event_frame
from dropsim.notifications.hub import Hub
from dropsim.notifications.routing import STOCK_MOVERS, audiences
from dropsim.notifications.stock import StockUpdates

logger = logging.getLogger("dropsim.notifications")


class EventFeed(BackgroundTask):
    """Reads the log from the hub's position (XREAD BLOCK) and delivers in log order."""

    name = "event-feed"

    def __init__(
        self, events: EventLog, hub: Hub, stock: StockUpdates, *, block_ms: int = 250
    ) -> None:
        super().__init__()
        self._events = events
        self._hub = hub
        self._stock = stock
        self._block_ms = block_ms
        self._stopping = False

    async def stop(self) -> None:
        """Let the current read end by itself (within `block_ms`) instead of cancelling it:
        redis-py can swallow a cancellation that lands in a blocking XREAD and read on, which
        hung shutdown; cancelling stays the fallback."""
        self._stopping = True
        task = self._task
        if task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), self._block_ms / 1000 + 2.0)
        await super().stop()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                entries = await self._events.wait_after(self._hub.position, self._block_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reading the event log failed; retrying in a second")
                await asyncio.sleep(1.0)
                continue
            for entry in entries:
                self.deliver(entry)

    def deliver(self, entry: LogEntry) -> None:
        """Route one entry to its streams and move the hub's position past it."""
        hub = self._hub
        event_type = entry.type
        data = entry.data()
        if event_type in STOCK_MOVERS:
            self._stock.mark(str(data.get("drop_id", "")))
        elif event_type == CreatorFollowed.type:
            hub.followed(str(data["user_id"]), str(data["creator_id"]))
        elif event_type == CreatorUnfollowed.type:
            hub.unfollowed(str(data["user_id"]), str(data["creator_id"]))
        targets = audiences(event_type, data)
        if targets:
            recipients = hub.recipients(targets)
            if recipients:
                frame = event_frame(entry.id, event_type, entry.at, entry.data_json)
                key = id_key(entry.id)
                delivered = 0
                for subscriber in recipients:
                    resume_after = subscriber.resume_after
                    if resume_after is not None:
                        if key <= resume_after:
                            continue  # the client saw it already (through another process)
                        subscriber.resume_after = None
                    subscriber.push(frame)
                    delivered += 1
                if delivered:
                    EVENTS_DELIVERED.labels(event_type).inc(delivered)
                    FANOUT_LAG.observe(time.time() - entry.at)
        hub.position = entry.id
