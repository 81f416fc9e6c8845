"""The drop clock: a background task that moves drops through their lifecycle on time, unasked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from dropsim.background import BackgroundTask
from dropsim.creators.service import CreatorService

logger = logging.getLogger("dropsim.clock")


class DropClock(BackgroundTask):
    """Sleeps until the next due transition, or `poll_seconds` to see other processes' drops."""

    name = "drop-clock"

    def __init__(self, service: CreatorService, *, poll_seconds: float = 0.5) -> None:
        super().__init__()
        self._service = service
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        service.on_schedule_change(self._wake.set)

    async def _run(self) -> None:
        while True:
            try:
                await self._service.advance_due_drops()
                due = await self._service.next_due_at()
            except Exception:
                logger.exception("drop clock tick failed; retrying in a second")
                due = time.time() + 1.0
            # a floor keeps a drop that another process is moving right now from spinning this loop
            delay = self._poll if due is None else min(max(due - time.time(), 0.005), self._poll)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
