"""The real KV store: a Redis server over the network (redis-py's asyncio client)."""

from __future__ import annotations

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from dropsim.errors import BackendUnavailable
from dropsim.ports import KeyValueStore


async def open_redis_kv(url: str, *, max_connections: int = 64) -> KeyValueStore:
    """A client for `url`, checked with a PING so a wrong URL fails at start-up, not mid-rush.

    Its pool holds at most `max_connections` and makes a burst wait for a free connection
    (up to 10 s) rather than fail, as redis-py's default pool does past 100.
    """
    pool = redis_asyncio.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=3,
        max_connections=max_connections,
        timeout=10,
    )
    client = redis_asyncio.Redis(connection_pool=pool)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise BackendUnavailable(f"cannot reach Redis at {url}: {exc}") from None
    return client
