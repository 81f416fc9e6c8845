"""Follow use cases: follow, unfollow, list followers and followings, and bulk seeding.

Every edge is written twice, on two shards, without a distributed transaction: first the
by-creator row (the truth, with the follower count in the same transaction), then the by-follower
copy. Both halves run under a lock per (user, creator) pair shared by every process, so a follow
and an unfollow of one pair never interleave their halves.

If a process dies between the two writes, that one pair's by-follower copy is stale (a follow
missing from "what I follow", or an unfollowed creator still in it); counts and follower lists are
right, since they come from the by-creator side. Repeating the request heals it (both halves are
idempotent and the second is always written), and `repair_pair` copies the truth over on demand.
A caller that is cancelled midway (a client hanging up) does not split a pair: the locked section
finishes in its own task.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from dropsim.creators.service import CreatorService
from dropsim.errors import InvalidRequest
from dropsim.eventlog import EventLog
from dropsim.events import CreatorFollowed, CreatorUnfollowed
from dropsim.follows.models import Follower, Following, FollowState
from dropsim.follows.store import FollowStore, PairLock
from dropsim.ports import KeyValueStore, ShardedDatabase

T = TypeVar("T")


class FollowService:
    """Follow edges. Follow and unfollow are idempotent; events go out only on a real change."""

    def __init__(
        self,
        db: ShardedDatabase,
        kv: KeyValueStore,
        creators: CreatorService,
        events: EventLog,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = FollowStore(db)
        self._locks = PairLock(kv)
        self._creators = creators
        self._events = events
        self._clock = clock
        self._running: set[asyncio.Task[Any]] = set()

    async def follow(self, user_id: str, creator_id: str) -> FollowState:
        """Make `user_id` follow `creator_id`; NotFound for an unknown creator."""
        await self._check_pair(user_id, creator_id)
        return await self._finish(self._follow(user_id, creator_id))

    async def unfollow(self, user_id: str, creator_id: str) -> FollowState:
        """Make `user_id` stop following `creator_id` (a no-op if they did not)."""
        await self._check_pair(user_id, creator_id)
        return await self._finish(self._unfollow(user_id, creator_id))

    async def repair_pair(self, user_id: str, creator_id: str) -> bool:
        """Make the by-follower copy of one pair match the by-creator side; True if it differed."""
        async with self._locks.hold(user_id, creator_id):
            followed_at = await self._store.followed_at(creator_id, user_id)
            if followed_at is None:
                return await self._store.remove_following(user_id, creator_id)
            return await self._store.add_following(user_id, creator_id, followed_at)

    async def is_following(self, user_id: str, creator_id: str) -> bool:
        return await self._store.followed_at(creator_id, user_id) is not None

    async def followers(self, creator_id: str, after: str, limit: int) -> list[Follower]:
        """Followers of a creator in `user_id` order, those after `after` (keyset pagination)."""
        await self._creators.creator(creator_id)
        return await self._store.followers(creator_id, after, limit)

    async def following(self, user_id: str, after: str, limit: int) -> list[Following]:
        """Creators `user_id` follows in `creator_id` order, those after `after`."""
        return await self._store.following(user_id, after, limit)

    async def follower_count(self, creator_id: str) -> int:
        await self._creators.creator(creator_id)
        return await self._store.follower_count(creator_id)

    async def following_ids(self, user_id: str) -> list[str]:
        """Every creator `user_id` follows (a user follows hundreds, not millions)."""
        return await self._store.following_ids(user_id)

    async def add_followers_in_bulk(
        self, creator_id: str, follower_ids: Sequence[str], at: float
    ) -> int:
        """Seed edges to `creator_id` (skipping ones that exist); return how many were added.

        For seeding: no per-pair lock and no events (a million `creator.followed` would flood the
        log), so do not run it against live unfollows of the same users.
        """
        await self._creators.creator(creator_id)
        follower_ids = [user_id for user_id in follower_ids if user_id != creator_id]
        if not follower_ids:
            return 0
        return await self._store.add_followers_in_bulk(creator_id, follower_ids, at)

    async def _follow(self, user_id: str, creator_id: str) -> FollowState:
        async with self._locks.hold(user_id, creator_id):
            inserted, followed_at, count = await self._store.add_follower(
                creator_id, user_id, self._clock()
            )
            copied = await self._store.add_following(user_id, creator_id, followed_at)
            # `copied` alone means an earlier attempt died between the halves, before announcing
            if inserted or copied:
                await self._events.publish(CreatorFollowed(creator_id=creator_id, user_id=user_id))
        return FollowState(creator_id=creator_id, following=True, follower_count=count)

    async def _unfollow(self, user_id: str, creator_id: str) -> FollowState:
        async with self._locks.hold(user_id, creator_id):
            deleted, count = await self._store.remove_follower(creator_id, user_id)
            uncopied = await self._store.remove_following(user_id, creator_id)
            if deleted or uncopied:
                await self._events.publish(
                    CreatorUnfollowed(creator_id=creator_id, user_id=user_id)
                )
        return FollowState(creator_id=creator_id, following=False, follower_count=count)

    async def _check_pair(self, user_id: str, creator_id: str) -> None:
        if user_id == creator_id:
            raise InvalidRequest("you cannot follow yourself", code="follow_self")
        await self._creators.creator(creator_id)

    async def _finish(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to the end even if the caller is cancelled: no pair is left half-written."""
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)
