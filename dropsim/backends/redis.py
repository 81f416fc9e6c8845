"""The real KV store: a Redis server over the network (redis-py's asyncio client)."""

from __future__ import annotations

from typing import cast

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from dropsim.errors import BackendUnavailable
from dropsim.ports import KeyValueStore


async def open_redis_kv(url: str) -> KeyValueStore:
    """A client for `url`, checked with a PING so a wrong URL fails at start-up, not mid-rush."""
    client = redis_asyncio.from_url(
        url, decode_responses=True, health_check_interval=30, socket_connect_timeout=3
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise BackendUnavailable(f"cannot reach Redis at {url}: {exc}") from None
    return cast(KeyValueStore, client)
