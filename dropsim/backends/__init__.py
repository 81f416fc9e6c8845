"""Backends by URL: the only place that turns a settings URL into a concrete client."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from dropsim.errors import ConfigurationError
from dropsim.ports import KeyValueStore, ShardedDatabase
from dropsim.settings import Settings


async def open_kv(url: str) -> KeyValueStore:
    """`memory://` -> fakeredis in process; `redis://`, `rediss://`, `unix://` -> Redis."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from dropsim.backends.memory import open_memory_kv

        return open_memory_kv()
    if scheme in {"redis", "rediss", "unix"}:
        from dropsim.backends.redis import open_redis_kv

        return await open_redis_kv(url)
    raise ConfigurationError(f"unknown KV scheme {scheme!r}")


async def open_database(url: str, shards: int) -> ShardedDatabase:
    """`sqlite:///dir/shard-{shard}.db` -> SQLite files; `postgresql://...` -> PostgreSQL."""
    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme == "sqlite":
        from dropsim.backends.sqlite import SQLiteDatabase

        return await SQLiteDatabase.connect(url, shards)
    if scheme in {"postgresql", "postgres"}:
        from dropsim.backends.postgres import PostgresDatabase

        return await PostgresDatabase.connect(url, shards)
    raise ConfigurationError(f"unknown SQL scheme {scheme!r}")


@dataclass(slots=True)
class Backends:
    """The opened backends of one process."""

    kv: KeyValueStore
    db: ShardedDatabase

    @classmethod
    async def open(cls, settings: Settings) -> Backends:
        kv = await open_kv(settings.kv_url)
        try:
            db = await open_database(settings.db_url, settings.shards)
        except BaseException:
            await kv.aclose()
            raise
        return cls(kv=kv, db=db)

    async def close(self) -> None:
        await self.db.close()
        await self.kv.aclose()
