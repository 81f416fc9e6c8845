"""A loop the app runs beside its requests (the drop clock, the reaper): started in the
lifespan, cancelled and awaited on shutdown."""

from __future__ import annotations

import asyncio
import contextlib


class BackgroundTask:
    """Subclasses implement `_run`, a loop that never returns on its own."""

    name = "background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        raise NotImplementedError
