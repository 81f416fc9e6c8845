"""The SSE response's writes: live frames written on the spot while the stream is parked, and in
order when a connection's buffer is full (its send has to wait for the drain)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from dropsim.notifications.frames import Frame
from dropsim.notifications.hub import Subscriber
from dropsim.notifications.streaming import EventStream


async def frames_of(subscriber: Subscriber) -> AsyncGenerator[Frame, None]:
    """What the notification service's stream does, reduced to its shape."""
    yield Frame(b"retry: 1000\r\n\r\n")
    while True:
        live = await subscriber.next_frames()
        if live is None:
            return
        yield live


class Connection:
    """An ASGI server's side: records bodies; a body containing b"slow" waits for `drained`,
    one containing b"boom" fails."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.drained = asyncio.Event()
        self.gone = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        if b"slow" in message["body"]:
            await self.drained.wait()
        if b"boom" in message["body"]:
            raise ConnectionResetError("the connection broke under the write")
        self.bodies.append(message["body"])

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    def written(self) -> bytes:
        return b"".join(self.bodies)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def open_stream() -> tuple[Subscriber, Connection, asyncio.Task[None]]:
    subscriber = Subscriber("usr_1", [], [])
    connection = Connection()
    app: Any = EventStream(frames_of(subscriber), subscriber).to_asgi_response(None, None)  # type: ignore[arg-type]
    task = asyncio.create_task(app({"type": "http"}, connection.receive, connection.send))
    await settle()
    assert connection.bodies == [b"retry: 1000\r\n\r\n"]
    return subscriber, connection, task


async def test_a_parked_stream_gets_live_frames_written_on_the_spot() -> None:
    subscriber, connection, task = await open_stream()
    subscriber.push(Frame(b"a"))
    subscriber.push(Frame(b"b"))
    # written inside push, before any task ran
    assert connection.bodies[1:] == [b"a", b"b"]
    connection.gone.set()
    await asyncio.wait_for(task, 1)
    assert subscriber.writer is None


async def test_frames_keep_their_order_while_a_send_waits_for_the_drain() -> None:
    subscriber, connection, task = await open_stream()
    subscriber.push(Frame(b"1-slow"))  # this send waits for the buffer to drain
    subscriber.push(Frame(b"2"))
    subscriber.push(Frame(b"3"))
    await settle()
    assert connection.written() == b"retry: 1000\r\n\r\n"  # nothing overtook the waiting send
    connection.drained.set()
    await settle()
    assert connection.written().endswith(b"1-slow23")
    subscriber.push(Frame(b"4"))  # parked again: on the spot
    assert connection.written().endswith(b"1-slow234")
    connection.gone.set()
    await asyncio.wait_for(task, 1)


async def test_a_client_leaving_mid_wait_ends_the_stream_and_its_pending_send() -> None:
    subscriber, connection, task = await open_stream()
    subscriber.push(Frame(b"slow"))
    await settle()
    connection.gone.set()
    await asyncio.wait_for(task, 1)
    assert subscriber.writer is None
    subscriber.push(Frame(b"after"))  # queued for nobody; nothing is written
    assert b"after" not in connection.written()


async def test_a_write_that_fails_on_the_spot_ends_the_stream_with_its_error() -> None:
    subscriber, _, task = await open_stream()
    subscriber.push(Frame(b"boom"))
    done, _ = await asyncio.wait([task], timeout=1)
    assert done, "the stream went on after its write failed"
    assert isinstance(task.exception(), ConnectionResetError)
    assert subscriber.writer is None
