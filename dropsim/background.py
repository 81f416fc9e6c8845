"""A loop the app runs beside its requests (the drop clock, the reaper): started in the
lifespan, cancelled and awaited on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger("dropsim.background")

STOP_GRACE_SECONDS = 10.0
"""How long `stop` waits for a loop to end before it gives up on it (and says so)."""


class BackgroundTask:
    """Subclasses implement `_run`, a loop that never returns on its own."""

    name = "background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the loop and wait for it, cancelling again while it runs on: a cancellation
        can be swallowed by a client library mid-read (redis-py has done so), and one swallowed
        cancellation must not hang shutdown. Gives up after `STOP_GRACE_SECONDS`."""
        task, self._task = self._task, None
        if task is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE_SECONDS
        while not task.done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                logger.error(
                    "%s did not stop within %.0f s; left behind", self.name, STOP_GRACE_SECONDS
                )
                return
            task.cancel()
            await asyncio.wait({task}, timeout=min(0.5, remaining))
        with contextlib.suppress(asyncio.CancelledError):
            if (error := task.exception()) is not None:
                logger.error("%s had failed", self.name, exc_info=error)

    async def _run(self) -> None:
        raise NotImplementedError
