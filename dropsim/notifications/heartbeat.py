"""Heartbeat comments on every open stream, so idle connections survive proxies and clients can
tell a quiet stream from a dead one."""

from __future__ import annotations

import asyncio

from dropsim.background import BackgroundTask
from dropsim.notifications.frames import HEARTBEAT
from dropsim.notifications.hub import Hub


class Heartbeat(BackgroundTask):
    name = "sse-heartbeat"

    def __init__(self, hub: Hub, *, interval_seconds: float) -> None:
        super().__init__()
        self._hub = hub
        self._interval = interval_seconds

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for subscriber in self._hub.everyone():
                subscriber.push(HEARTBEAT)
