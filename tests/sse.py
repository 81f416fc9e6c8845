"""A small Server-Sent Events client for tests: reads a real stream over HTTP into frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx


@dataclass
class Frame:
    """One SSE frame as the client saw it, with the time it arrived."""

    event: str | None = None
    id: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    received_at: float = 0.0

    def envelope(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.data)
        return parsed


class Stream:
    """An open stream; frames are collected in the background as they arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.frames: list[Frame] = []
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        frame = Frame()
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if frame.event or frame.data or frame.retry is not None or frame.comments:
                    frame.received_at = time.time()
                    async with self._arrived:
                        self.frames.append(frame)
                        self._arrived.notify_all()
                frame = Frame()
            elif line.startswith(":"):
                frame.comments.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    frame.event = value
                elif name == "id":
                    frame.id = value
                elif name == "data":
                    frame.data = f"{frame.data}\n{value}" if frame.data else value
                elif name == "retry":
                    frame.retry = int(value)

    def events(self, event: str | None = None) -> list[Frame]:
        return [
            f for f in self.frames if f.event is not None and (event is None or f.event == event)
        ]

    async def wait_for(self, event: str, count: int = 1, within: float = 15.0) -> list[Frame]:
        """The first `count` frames of type `event`; fails the test after `within` seconds."""

        async def arrived() -> list[Frame]:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.events(event)) >= count)
            return self.events(event)[:count]

        try:
            return await asyncio.wait_for(arrived(), within)
        except TimeoutError:
            seen = [(f.event, f.data[:120]) for f in self.frames]
            raise AssertionError(f"no {count} x {event} within {within}s; saw {seen}") from None

    async def wait_until(self, predicate: Any, within: float = 15.0) -> None:
        async def arrived() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: predicate(self))

        try:
            await asyncio.wait_for(arrived(), within)
        except TimeoutError:
            seen = [(f.event, f.data[:120]) for f in self.frames]
            raise AssertionError(f"condition not met within {within}s; saw {seen}") from None

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
            await self._reader
        self.response.close()


async def stream_ticket(client: httpx.AsyncClient, token: str) -> str:
    """A one-time ticket for opening a stream as the holder of `token`."""
    response = await client.post("/v1/stream/tickets", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["expires_in_seconds"] <= 60
    ticket: str = body["ticket"]
    return ticket


@contextlib.asynccontextmanager
async def open_stream(
    session: aiohttp.ClientSession,
    url: str,
    *,
    token: str | None = None,
    ticket: str | None = None,
    drops: list[str] | None = None,
    last_event_id: str | None = None,
) -> AsyncIterator[Stream]:
    """Open `/v1/stream` and wait until the server has registered it (its `retry:` arrived)."""
    params = {}
    headers = {"Accept": "text/event-stream"}
    if ticket:
        params["ticket"] = ticket
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if drops:
        params["drops"] = ",".join(drops)
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    response = await session.get(
        f"{url}/v1/stream", params=params, headers=headers, timeout=aiohttp.ClientTimeout(None)
    )
    assert response.status == 200, await response.text()
    stream = Stream(response)
    try:
        await stream.wait_until(lambda s: any(f.retry is not None for f in s.frames))
        yield stream
    finally:
        await stream.close()
