"""HTTP between us and the provider under a rush: httpx, with requests queued in front of it.

httpx's pool re-scans every queued request for every free connection, so with thousands of
callbacks or charges in flight its own bookkeeping ate most of a core (profiled: 75 % of the
server's samples in `_assign_requests_to_connections`). Callers hold `in_flight` around each
request, so at most CONNECTIONS requests are ever inside the pool and the rest wait, cheaply,
on a semaphore.
"""

from __future__ import annotations

import asyncio

import httpx

CONNECTIONS = 4


def pooled_client(timeout_seconds: float) -> httpx.AsyncClient:
    """A client with CONNECTIONS keep-alive connections; waiting for one is local queueing, not
    slowness of the other side, so only the request itself is timed."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_seconds, pool=None),
        limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS),
    )


def in_flight_gate() -> asyncio.Semaphore:
    """Hold this around each request made with a `pooled_client`."""
    return asyncio.Semaphore(CONNECTIONS)
