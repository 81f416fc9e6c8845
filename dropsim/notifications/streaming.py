"""The SSE response: frames written straight to the ASGI `send`, one task per stream.

Litestar's `ServerSentEvent` wraps the frames in two iterators and runs each stream in an anyio
task group beside a disconnect listener; in a broadcast to ten thousand streams those layers cost
more than the socket writes themselves. Here a stream is its own request task writing each frame
as it comes, and a small watcher task ends it (by cancelling it) when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

from litestar import Response
from litestar.response.base import ASGIResponse
from litestar.types import Receive, Scope, Send

from dropsim.notifications.frames import Frame

if TYPE_CHECKING:
    from litestar import Litestar, Request

HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # proxies must not buffer the stream
]


class EventStream(Response[None]):
    """A handler's return value for a stream of `frames` (ends when they end or the client
    leaves; the generator is closed either way, so its `finally` runs)."""

    def __init__(self, frames: AsyncGenerator[Frame, None]) -> None:
        super().__init__(content=None, status_code=200)
        self.frames = frames

    def to_asgi_response(
        self, app: Litestar | None, request: Request[Any, Any, Any], **_: Any
    ) -> ASGIResponse:
        return cast(ASGIResponse, _EventStreamApp(self.frames))


class _EventStreamApp:
    __slots__ = ("_client_left", "_finished", "_frames")

    def __init__(self, frames: AsyncGenerator[Frame, None]) -> None:
        self._frames = frames
        self._client_left = False
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        assert streaming is not None
        watcher = asyncio.create_task(self._watch(receive, streaming))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
            async for frame in self._frames:
                await send({"type": "http.response.body", "body": frame.encoded, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._client_left:
                raise  # the server is shutting down
            streaming.uncancel()
        finally:
            self._finished = True
            watcher.cancel()
            await self._frames.aclose()

    async def _watch(self, receive: Receive, streaming: asyncio.Task[Any]) -> None:
        """Wait for the client to go away, then end the stream."""
        with contextlib.suppress(asyncio.CancelledError):
            while (await receive())["type"] != "http.disconnect":
                pass
            if not self._finished:
                self._client_left = True
                streaming.cancel()
