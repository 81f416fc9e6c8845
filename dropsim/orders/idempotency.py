"""Idempotency keys as Stripe and the IETF draft define them, stored beside the inventory.

A key is scoped to its user. The reservation script claims it (`state=running`, short TTL so a
crashed request frees it); the order path then stores the final status and body (`state=done`,
kept 24 h). Validation failures and 429s never reach the script, so they are never stored.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import cast

from dropsim.batching import Batcher
from dropsim.ports import KeyValueStore

KEPT_SECONDS = 24 * 3600
"""How long a finished key replays its response (the drafts ask for at least 24 h)."""
RUNNING_SECONDS = 60
"""How long a claim survives without a stored response (a request that crashed mid-way)."""
MAX_KEY_LENGTH = 255


def record_key(user_id: str, key: str) -> str:
    return f"idem:{user_id}:{key}"


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests "the same": method, path and the raw body."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (method.encode(), b" ", path.encode(), b"\n", body):
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: str
    running: bool
    status: int | None
    body: str | None


# KEYS: record keys    Returns fp, state, status, body per key (nil where absent).
LOOKUP = """
local out = {}
for i = 1, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'fp', 'state', 'status', 'body')
  for j = 1, 4 do out[4 * (i - 1) + j] = fields[j] end
end
return out
"""

# KEYS: record keys    ARGV: ttl s, then per key: status, body
# Stores the responses of a batch of finished requests (state=done), each kept `ttl` seconds.
FINISH = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('HSET', KEYS[i], 'state', 'done', 'status', ARGV[2 * i], 'body', ARGV[2 * i + 1])
  redis.call('EXPIRE', KEYS[i], ttl)
end
return #KEYS
"""


class IdempotencyRecords:
    """Reads and finishes the records that the reservation script claims."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv
        self._finish = kv.register_script(FINISH)
        self._lookup = kv.register_script(LOOKUP)
        self._lookups: Batcher[str, StoredResponse | None] = Batcher(self._lookup_batch)
        self._finishing: Batcher[tuple[str, int, str], None] = Batcher(self._finish_batch)

    async def lookup(self, user_id: str, key: str) -> StoredResponse | None:
        """The record of `key`, None if it was never used (concurrent lookups share one script
        call: under a sold-out rush every request makes one)."""
        return await self._lookups.submit(record_key(user_id, key))

    async def _lookup_batch(self, names: list[str]) -> list[StoredResponse | None]:
        values = cast("list[str | None]", await self._lookup(keys=names))
        found: list[StoredResponse | None] = []
        for at in range(0, len(values), 4):
            fp, state, status, body = values[at : at + 4]
            found.append(
                None
                if fp is None
                else StoredResponse(
                    fp, state == "running", None if status is None else int(status), body
                )
            )
        return found

    async def finish(self, user_id: str, key: str, status: int, body: str) -> None:
        """Store the response a repeat of this request will replay (concurrent finishes share
        one script call)."""
        await self._finishing.submit((record_key(user_id, key), status, body))

    async def _finish_batch(self, records: list[tuple[str, int, str]]) -> list[None]:
        args: list[str | int] = [KEPT_SECONDS]
        for _, status, body in records:
            args += (status, body)
        await self._finish(keys=[name for name, _, _ in records], args=args)
        return [None] * len(records)

    async def forget(self, user_id: str, key: str) -> None:
        """Drop a claim whose request failed on our side, so the client may retry the key."""
        await self._kv.delete(record_key(user_id, key))
