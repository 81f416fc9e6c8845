"""The SSE response: frames written straight to the ASGI `send`, one task per stream.

Litestar's `ServerSentEvent` wraps the frames in two iterators and runs each stream in an anyio
task group beside a disconnect listener; in a broadcast to ten thousand streams those layers cost
more than the socket writes themselves. Here a stream is its own request task writing each frame
as it comes, and a small watcher task ends it (by cancelling it) when the client goes away.

While that task is parked, a live frame does not wake it: the broadcasting code writes it
through `write_now`, which runs the ASGI `send` coroutine on the spot. A send completes without
suspending unless the connection's buffer is full (uvicorn then waits for it to drain); in that
case the rest of the send goes on in a task of its own, and the stream writes nothing else until
it has finished, so frames keep their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import AsyncGenerator, Awaitable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, cast

from litestar import Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from dropsim.notifications.frames import Frame
from dropsim.notifications.hub import Subscriber

if TYPE_CHECKING:
    from litestar import Litestar, Request

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer the stream
]


class EventStream(Response[None]):
    """A handler's return value for a stream of `frames` (ends when they end or the client
    leaves; the generator is closed either way, so its `finally` runs). With `subscriber`, its
    live frames are written without waking the stream's task (see the module docstring)."""

    def __init__(
        self, frames: AsyncGenerator[Frame, None], subscriber: Subscriber | None = None
    ) -> None:
        super().__init__(content=None, status_code=200)
        self.frames = frames
        self.subscriber = subscriber

    def to_asgi_response(
        self, app: Litestar | None, request: Request[Any, Any, Any], **_: Any
    ) -> ASGIResponse:
        return cast(ASGIResponse, _EventStreamApp(self.frames, self.subscriber))


class _EventStreamApp:
    __slots__ = ("_client_left", "_finished", "_frames", "_send", "_subscriber", "_unfinished")

    def __init__(self, frames: AsyncGenerator[Frame, None], subscriber: Subscriber | None) -> None:
        self._frames = frames
        self._subscriber = subscriber
        self._client_left = False
        self._finished = False
        self._send: Send | None = None
        self._unfinished: asyncio.Future[None] | None = None
        """The rest of a `write_now` send that had to wait for the connection to drain."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        watcher = asyncio.create_task(self._watch(receive, streaming))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            self._send = send
            if self._subscriber is not None:
                self._subscriber.writer = self.write_now
            async for frame in self._frames:
                await self._drained()
                await send({"type": "http.response.body", "body": frame.encoded, "more_body": True})
            await self._drained()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._client_left:
                raise  # the server is shutting down
            streaming.uncancel()
        finally:
            self._finished = True
            if self._subscriber is not None:
                self._subscriber.writer = None
            unfinished = self._unfinished
            if unfinished is not None and not unfinished.cancel() and not unfinished.cancelled():
                unfinished.exception()  # the stream is over: its last send's error is moot
            watcher.cancel()
            await self._frames.aclose()

    def write_now(self, frame: Frame) -> bool:
        """Write `frame` from the caller's context; False (nothing written) while an earlier
        write is still waiting for the connection to drain."""
        unfinished = self._unfinished
        if unfinished is not None:
            if not unfinished.done():
                return False
            self._unfinished = None
            if not unfinished.cancelled() and unfinished.exception() is not None:
                self._unfinished = unfinished  # the task re-raises it and the stream ends
                return False
        assert self._send is not None
        sending = self._send(
            {"type": "http.response.body", "body": frame.encoded, "more_body": True}
        )
        if not isinstance(sending, Coroutine):  # an awaitable of another kind: let a task run it
            self._unfinished = asyncio.ensure_future(sending)
            return True
        try:
            blocker = sending.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            # not written: the frame is queued, the stream's task wakes, meets the error in
            # `_drained` and ends as a failed send of its own would have ended it
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            self._unfinished = failed
            return False
        self._unfinished = asyncio.ensure_future(_finish(sending, blocker))
        return True

    async def _drained(self) -> None:
        """Wait for the rest of a `write_now` send (and raise its error, if it failed)."""
        unfinished = self._unfinished
        if unfinished is not None:
            self._unfinished = None
            await unfinished

    async def _watch(self, receive: Receive, streaming: asyncio.Task[Any]) -> None:
        """Wait for the client to go away, then end the stream."""
        with contextlib.suppress(asyncio.CancelledError):
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self._finished:
                self._client_left = True
                streaming.cancel()


async def _finish(sending: Coroutine[Any, Any, None], blocker: Any) -> None:
    await cast("Awaitable[None]", _resume(sending, blocker))


@types.coroutine
def _resume(sending: Coroutine[Any, Any, None], blocker: Any) -> Generator[Any, Any, None]:
    """Drive `sending`, which suspended on `blocker`, to its end, exactly as the task awaiting
    it would have: hand each future it waits on to the running task, resume it when it is done
    (or throw in what the task was thrown)."""
    while True:
        try:
            yield blocker
        except BaseException as exc:  # passed on to the coroutine, as a task does
            try:
                blocker = sending.throw(exc)
            except StopIteration:
                return
            continue
        try:
            blocker = sending.send(None)
        except StopIteration:
            return
