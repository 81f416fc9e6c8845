"""The micro-batcher under the hot paths: who shares a call, in what order, and whose error."""

from __future__ import annotations

import asyncio

import pytest

from dropsim.batching import Batcher


class Recorder:
    """A batch handler that doubles numbers, refuses negative ones, and can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        await self.gate.wait()
        return [ValueError(f"{item} < 0") if item < 0 else 2 * item for item in items]


async def settle_flush() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_lone_call_goes_at_once_and_calls_meanwhile_share_the_next() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.handle)
    recorder.gate.clear()
    first = asyncio.create_task(batcher.submit(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert recorder.batches == [[1]]  # not waiting for company
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    recorder.gate.set()
    assert batcher.busy
    assert await first == 2
    assert await asyncio.gather(*rest) == [4, 6, 8, 10, 12]
    await settle_flush()
    assert not batcher.busy
    assert recorder.batches == [[1], [2, 3, 4, 5, 6]]  # in the order they were submitted


async def test_batches_are_capped() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.handle, max_batch=4)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(10))) == [
        2 * n for n in range(10)
    ]
    assert [len(batch) for batch in recorder.batches] == [4, 4, 2]


async def test_an_item_refused_by_the_handler_fails_alone() -> None:
    batcher = Batcher(Recorder().handle)
    answers = await asyncio.gather(
        batcher.submit(1), batcher.submit(-1), batcher.submit(3), return_exceptions=True
    )
    assert answers[0] == 2
    assert answers[2] == 6
    assert isinstance(answers[1], ValueError)


async def test_a_failing_call_fails_its_batch_and_not_the_next() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("gone")
        return items

    batcher = Batcher(flaky)
    with pytest.raises(ConnectionError):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))
    assert await batcher.submit(3) == 3


async def test_a_handler_answering_the_wrong_count_fails_the_batch_instead_of_hanging() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    batcher = Batcher(short)
    with pytest.raises(RuntimeError, match="answered 1 of 2"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_a_cancelled_caller_does_not_stop_its_neighbours() -> None:
    recorder = Recorder()
    batcher = Batcher(recorder.handle)
    recorder.gate.clear()
    leaving = asyncio.create_task(batcher.submit(1))
    staying = asyncio.create_task(batcher.submit(2))
    await asyncio.sleep(0)
    leaving.cancel()
    recorder.gate.set()
    assert await staying == 4
    assert leaving.cancelled()
