"""Background loops stop on shutdown even when a cancellation is swallowed on the way."""

from __future__ import annotations

import asyncio
import logging

import pytest

import dropsim.background
from dropsim.background import BackgroundTask


class Swallower(BackgroundTask):
    """Swallows its first `swallow` cancellations, as a client library mid-read has done."""

    name = "swallower"

    def __init__(self, swallow: int) -> None:
        super().__init__()
        self.swallow = swallow
        self.swallowed = 0
        self.released = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if self.swallowed >= self.swallow:
                    raise
                self.swallowed += 1
                if self.released.is_set():
                    return


async def test_a_swallowed_cancellation_does_not_hang_stop() -> None:
    loop = Swallower(swallow=2)
    loop.start()
    await asyncio.sleep(0)
    await asyncio.wait_for(loop.stop(), 5)
    assert loop.swallowed == 2


async def test_a_loop_that_will_not_stop_is_left_behind_with_an_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(dropsim.background, "STOP_GRACE_SECONDS", 1.2)
    loop = Swallower(swallow=1_000_000)
    loop.start()
    task = loop._task
    assert task is not None
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, "dropsim.background"):
        await asyncio.wait_for(loop.stop(), 5)
    assert "swallower did not stop within" in caplog.text
    assert loop.swallowed >= 2  # it was cancelled again, not once
    loop.released.set()
    task.cancel()
    await asyncio.wait({task}, timeout=1)
    assert task.done()
