"""HTTP between us and the payment provider under a rush: aiohttp, with requests queued in front.

Every order makes a charge request and every outcome a callback, so this client's cost is paid
per order. Measured here against the simulated provider, one process, 4 connections: httpx
~670-780 us of client CPU per POST, aiohttp ~215 us. (httpx's pool also re-scanned every
queued request for every free connection: 75 % of a rush's samples.) Callers queue on a
semaphore, so at most `connections` requests are inside the pool and only the request itself
is timed, never the wait for a connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp

CONNECTIONS = 4


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """What the other side answered."""

    status: int
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


class NoAnswer(Exception):
    """The request got no answer: refused, reset, or not answered within the timeout."""


class HttpPoster(Protocol):
    """POSTs bytes and hands back the answer (what the payment service and the simulated
    provider need of HTTP; tests wrap it to see what was sent)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        """POST `body`; raise NoAnswer when there is no answer in time."""

    async def close(self) -> None:
        """Release the connections."""


class PooledPoster:
    """`connections` keep-alive connections; each request times out after `timeout_seconds`."""

    def __init__(self, timeout_seconds: float, *, connections: int = CONNECTIONS) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._connections = connections
        self._in_flight = asyncio.Semaphore(connections)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        # made on first use: a session belongs to the running event loop
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=self._timeout,
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        async with self._in_flight:
            try:
                async with self._open().post(url, data=body, headers=headers) as response:
                    return HttpAnswer(response.status, await response.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise NoAnswer(repr(exc)) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
