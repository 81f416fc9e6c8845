"""The embedded KV store: fakeredis in this process, Lua scripts and streams included.

It speaks the real client's interface, so every service runs unchanged on it; it lives and dies
with the process (start-up rebuilds what matters from SQL).
"""

from __future__ import annotations

from typing import cast

import fakeredis
from redis.asyncio import BlockingConnectionPool

from dropsim.ports import KeyValueStore


def open_memory_kv() -> KeyValueStore:
    """A fresh, private in-memory store (its own fake server, shared with nobody)."""
    # a blocking pool: a burst of requests waits for a connection instead of failing with
    # "Too many connections" (redis-py's default pool raises at 100)
    client = fakeredis.FakeAsyncRedis(
        server=fakeredis.FakeServer(),
        decode_responses=True,
        connection_pool_class=BlockingConnectionPool,
        max_connections=1024,
    )
    return cast(KeyValueStore, client)
