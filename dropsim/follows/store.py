"""Follow tables (edges by creator, edges by follower, follower counts) and the per-pair KV lock.

`followers_by_creator` and `follower_counts` live on the creator's shard and change together in
one transaction, so a count is read, never computed; `following_by_user` lives on the follower's
shard. A bulk insert is one statement per shard whose rows arrive as one JSON array that the
database unpacks itself (`json_each` on SQLite, `json_array_elements_text` on PostgreSQL): no
per-row loop in the driver, which is what makes a million-follower seed take seconds.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import msgspec

from dropsim.errors import Conflict
from dropsim.follows.models import Follower, Following
from dropsim.ports import KeyValueStore, Migration, Queries, ShardedDatabase
from dropsim.timeutil import to_datetime

MIGRATIONS = (
    Migration(
        "follows-001",
        (
            "CREATE TABLE IF NOT EXISTS followers_by_creator (creator_id TEXT NOT NULL, "
            "follower_id TEXT NOT NULL, followed_at DOUBLE PRECISION NOT NULL, "
            "PRIMARY KEY (creator_id, follower_id))",
            "CREATE TABLE IF NOT EXISTS following_by_user (user_id TEXT NOT NULL, "
            "creator_id TEXT NOT NULL, followed_at DOUBLE PRECISION NOT NULL, "
            "PRIMARY KEY (user_id, creator_id))",
            "CREATE TABLE IF NOT EXISTS follower_counts (creator_id TEXT PRIMARY KEY, "
            "followers BIGINT NOT NULL)",
        ),
    ),
)

_ID_ROWS = {
    "sqlite": "json_each(?) AS ids",
    "postgresql": "json_array_elements_text(CAST(? AS json)) AS ids(value)",
}
"""A table of one `value` column from one parameter: a JSON array of strings."""

# `WHERE true` is required by SQLite: without it `INSERT ... SELECT ... ON CONFLICT` is ambiguous.
_BULK_FOLLOWERS = (
    "INSERT INTO followers_by_creator (creator_id, follower_id, followed_at) "
    "SELECT CAST(? AS TEXT), ids.value, CAST(? AS DOUBLE PRECISION) FROM {rows} WHERE true "
    "ON CONFLICT DO NOTHING"
)
_BULK_FOLLOWING = (
    "INSERT INTO following_by_user (user_id, creator_id, followed_at) "
    "SELECT ids.value, CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION) FROM {rows} WHERE true "
    "ON CONFLICT DO NOTHING"
)
_ADD_TO_COUNT = (
    "INSERT INTO follower_counts (creator_id, followers) VALUES (?, ?) "
    "ON CONFLICT (creator_id) DO UPDATE SET followers = follower_counts.followers + "
    "excluded.followers RETURNING followers"
)


class FollowStore:
    """Both copies of every edge and the counts. Callers serialise writes to one pair."""

    def __init__(self, db: ShardedDatabase) -> None:
        self._db = db

    # the by-creator side: the truth, and the count with it
    async def add_follower(
        self, creator_id: str, user_id: str, at: float
    ) -> tuple[bool, float, int]:
        """Record the edge; (inserted, followed_at as stored, follower count after)."""
        async with self._db.transaction(self._db.shard_of(creator_id)) as tx:
            inserted = await tx.execute(
                "INSERT INTO followers_by_creator (creator_id, follower_id, followed_at) "
                "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (creator_id, user_id, at),
            )
            if inserted:
                return True, at, await _add_to_count(tx, creator_id, 1)
            row = await tx.fetch_one(
                "SELECT (SELECT followed_at FROM followers_by_creator "
                "WHERE creator_id = ? AND follower_id = ?), "
                "(SELECT followers FROM follower_counts WHERE creator_id = ?)",
                (creator_id, user_id, creator_id),
            )
            assert row is not None  # a SELECT without FROM returns one row
            followed_at = at if row[0] is None else float(row[0])
            return False, followed_at, int(row[1] or 0)

    async def remove_follower(self, creator_id: str, user_id: str) -> tuple[bool, int]:
        """Delete the edge; (deleted, follower count after)."""
        async with self._db.transaction(self._db.shard_of(creator_id)) as tx:
            deleted = await tx.execute(
                "DELETE FROM followers_by_creator WHERE creator_id = ? AND follower_id = ?",
                (creator_id, user_id),
            )
            if deleted:
                return True, await _add_to_count(tx, creator_id, -1)
            return False, await _count(tx, creator_id)

    async def followed_at(self, creator_id: str, user_id: str) -> float | None:
        """When `user_id` followed `creator_id` (by-creator side), None if they do not."""
        row = await self._db.shard(self._db.shard_of(creator_id)).fetch_one(
            "SELECT followed_at FROM followers_by_creator WHERE creator_id = ? AND follower_id = ?",
            (creator_id, user_id),
        )
        return None if row is None else float(row[0])

    async def follower_count(self, creator_id: str) -> int:
        return await _count(self._db.shard(self._db.shard_of(creator_id)), creator_id)

    async def followers(self, creator_id: str, after: str, limit: int) -> list[Follower]:
        rows = await self._db.shard(self._db.shard_of(creator_id)).fetch_all(
            "SELECT follower_id, followed_at FROM followers_by_creator "
            "WHERE creator_id = ? AND follower_id > ? ORDER BY follower_id LIMIT ?",
            (creator_id, after, limit),
        )
        return [Follower(user_id=row[0], followed_at=to_datetime(row[1])) for row in rows]

    # the by-follower side: a copy, for "what does this user follow"
    async def add_following(self, user_id: str, creator_id: str, at: float) -> bool:
        changed = await self._db.shard(self._db.shard_of(user_id)).execute(
            "INSERT INTO following_by_user (user_id, creator_id, followed_at) VALUES (?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (user_id, creator_id, at),
        )
        return changed == 1

    async def remove_following(self, user_id: str, creator_id: str) -> bool:
        changed = await self._db.shard(self._db.shard_of(user_id)).execute(
            "DELETE FROM following_by_user WHERE user_id = ? AND creator_id = ?",
            (user_id, creator_id),
        )
        return changed == 1

    async def following(self, user_id: str, after: str, limit: int) -> list[Following]:
        rows = await self._db.shard(self._db.shard_of(user_id)).fetch_all(
            "SELECT creator_id, followed_at FROM following_by_user "
            "WHERE user_id = ? AND creator_id > ? ORDER BY creator_id LIMIT ?",
            (user_id, after, limit),
        )
        return [Following(creator_id=row[0], followed_at=to_datetime(row[1])) for row in rows]

    async def following_ids(self, user_id: str) -> list[str]:
        rows = await self._db.shard(self._db.shard_of(user_id)).fetch_all(
            "SELECT creator_id FROM following_by_user WHERE user_id = ? ORDER BY creator_id",
            (user_id,),
        )
        return [row[0] for row in rows]

    # seeding
    async def add_followers_in_bulk(
        self, creator_id: str, follower_ids: Sequence[str], at: float
    ) -> int:
        """Add every edge not there yet, on both sides; return how many were new.

        One transaction on the creator's shard (edges and count together) and one statement per
        follower shard, all shards written concurrently.
        """
        rows = _ID_ROWS[self._db.dialect]
        by_shard: dict[int, list[str]] = {}
        for follower_id in follower_ids:
            by_shard.setdefault(self._db.shard_of(follower_id), []).append(follower_id)
        added, *_ = await asyncio.gather(
            self._add_by_creator(creator_id, _json_sorted(follower_ids), at),
            *(
                self._db.shard(shard).execute(
                    _BULK_FOLLOWING.format(rows=rows), (creator_id, at, _json_sorted(ids))
                )
                for shard, ids in by_shard.items()
            ),
        )
        return int(added)

    async def _add_by_creator(self, creator_id: str, follower_ids: str, at: float) -> int:
        async with self._db.transaction(self._db.shard_of(creator_id)) as tx:
            added = await tx.execute(
                _BULK_FOLLOWERS.format(rows=_ID_ROWS[self._db.dialect]),
                (creator_id, at, follower_ids),
            )
            if added:
                await _add_to_count(tx, creator_id, added)
            return added


def _json_sorted(ids: Sequence[str]) -> str:
    # in key order, every insert appends to the B-tree: the cheapest insert there is
    return msgspec.json.encode(sorted(ids)).decode()


async def _add_to_count(tx: Queries, creator_id: str, delta: int) -> int:
    row = await tx.fetch_one(_ADD_TO_COUNT, (creator_id, delta))
    assert row is not None  # RETURNING always yields the row it wrote
    return int(row[0])


async def _count(queries: Queries, creator_id: str) -> int:
    row = await queries.fetch_one(
        "SELECT followers FROM follower_counts WHERE creator_id = ?", (creator_id,)
    )
    return 0 if row is None else int(row[0])


_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def pair_lock_key(user_id: str, creator_id: str) -> str:
    return f"lock:follow:{creator_id}:{user_id}"


class PairLock:
    """Mutual exclusion for one (user, creator) pair across every process sharing the KV store.

    A KV key set with NX and a unique token, released by a compare-and-delete script so a holder
    whose lease ran out never frees a lock someone else holds now. An asyncio lock per pair in
    front of it keeps waiters in this process from polling the KV store.
    """

    def __init__(
        self, kv: KeyValueStore, *, lease_ms: int = 5_000, wait_seconds: float = 10.0
    ) -> None:
        self._kv = kv
        self._lease_ms = lease_ms
        self._wait_seconds = wait_seconds
        self._release = kv.register_script(_RELEASE)
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, user_id: str, creator_id: str) -> AsyncIterator[None]:
        """Hold the pair's lock for the block; Conflict if it stays taken for `wait_seconds`."""
        key = pair_lock_key(user_id, creator_id)
        lock, users = self._local.get(key) or (asyncio.Lock(), 0)
        self._local[key] = (lock, users + 1)
        try:
            async with lock:
                token = secrets.token_hex(16)
                try:
                    await self._acquire(key, token)
                    yield
                finally:
                    # safe even when the SET never landed: the script only deletes our token
                    await self._release(keys=[key], args=[token])
        finally:
            lock, users = self._local[key]
            if users == 1:
                del self._local[key]
            else:
                self._local[key] = (lock, users - 1)

    async def _acquire(self, key: str, token: str) -> None:
        deadline = time.monotonic() + self._wait_seconds
        pause = 0.002
        while not await self._kv.set(key, token, nx=True, px=self._lease_ms):
            if time.monotonic() > deadline:
                raise Conflict(
                    "another change to this follow is still running; try again",
                    code="follow_busy",
                )
            # jittered so processes queued on one pair do not retry in lockstep
            await asyncio.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, 0.05)
