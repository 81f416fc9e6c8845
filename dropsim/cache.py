"""Cache-aside on the KV store: TTL with jitter, single-flight on a miss, explicit invalidation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from dropsim.ports import KeyValueStore

T = TypeVar("T")

_MISSING = "\x00missing"  # cached "no such row", so unknown ids do not hammer SQL


class Cache:
    """Read-through values of type `T`, stored as JSON under `prefix:key`."""

    def __init__(self, kv: KeyValueStore, *, ttl_seconds: float, jitter: float = 0.2) -> None:
        self._kv = kv
        self._ttl = ttl_seconds
        self._jitter = jitter
        self._loading: dict[str, asyncio.Future[Any]] = {}

    def _ttl_ms(self) -> int:
        return int(self._ttl * 1000 * (1 + random.random() * self._jitter))

    async def get_or_load(
        self, key: str, load: Callable[[], Awaitable[T | None]], kind: type[T]
    ) -> T | None:
        """The cached value for `key`, or `load()` once per process however many ask at once."""
        # Join the read in flight before sending our own GET: a GET sent while another caller's
        # load is finishing can still miss, and would load a second time.
        while (pending := self._loading.get(key)) is not None:
            try:
                result: T | None = await asyncio.shield(pending)
                return result
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # the caller that was loading got cancelled, we did not: take the load over
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            value: T | None
            raw = await self._kv.get(key)
            if raw is not None:
                value = None if raw == _MISSING else msgspec.json.decode(raw, type=kind)
            else:
                value = await load()
                encoded = _MISSING if value is None else msgspec.json.encode(value).decode()
                await self._kv.set(key, encoded, px=self._ttl_ms())
            future.set_result(value)
            return value
        except asyncio.CancelledError:
            future.cancel()  # waiters retry the load rather than being cancelled with us
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            del self._loading[key]

    async def invalidate(self, *keys: str) -> None:
        """Forget `keys` (after the database write that changed them)."""
        if keys:
            await self._kv.delete(*keys)
