"""Seeding celebrities: a creator and up to millions of deterministic fans, fast and resumable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from dropsim.accounts.models import Role, User
from dropsim.accounts.service import AccountService
from dropsim.creators.service import CreatorService
from dropsim.errors import Conflict, InvalidRequest, NotFound
from dropsim.follows.service import FollowService
from dropsim.gateway.tokens import Principal

DEFAULT_BATCH = 50_000


def fan_handle(creator_handle: str, n: int) -> str:
    return f"{creator_handle}-fan{n:07d}"


def fan_id(creator_handle: str, n: int) -> str:
    """The user id of fan number `n` of the creator with `creator_handle` (the same every run,
    so seeding resumes where it stopped and simulations can mint tokens for fans by number)."""
    return _user_id(fan_handle(creator_handle, n))


def _user_id(seeded_handle: str) -> str:
    return f"usr_{seeded_handle}"


class Seeder:
    """Creates seeded creators and their fans through the services' own interfaces."""

    def __init__(
        self,
        accounts: AccountService,
        creators: CreatorService,
        follows: FollowService,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._accounts = accounts
        self._creators = creators
        self._follows = follows
        self._clock = clock

    async def seed_creator(self, handle: str, display_name: str) -> str:
        """The id of the creator with `handle`, creating the user and the profile if needed."""
        try:
            return (await self._creators.creator_by_handle(handle)).id
        except NotFound:
            pass
        user_id = _user_id(handle)
        await self._accounts.add_seeded_users(
            [User(id=user_id, handle=handle, role=Role.CREATOR, created_at=self._clock())]
        )
        try:
            creator = await self._creators.become_creator(
                Principal(user_id=user_id, role=Role.CREATOR), handle, display_name, ""
            )
        except Conflict:
            # a concurrent seeder got there first, or a real creator owns the handle: theirs wins
            return (await self._creators.creator_by_handle(handle)).id
        return creator.id

    async def seed_followers(
        self,
        creator_id: str,
        count: int,
        *,
        start: int = 0,
        batch: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Make fans `start` .. `start + count - 1` of `creator_id` exist and follow it; return
        the edges really added (0 on a re-run). `progress` gets the number of fans done so far
        after each batch."""
        if count < 0 or start < 0 or batch < 1:
            raise InvalidRequest("count and start must be >= 0, batch >= 1", code="bad_seed")
        handle = (await self._creators.creator(creator_id)).handle
        added = 0
        for first in range(start, start + count, batch):
            last = min(first + batch, start + count)
            handles = [fan_handle(handle, n) for n in range(first, last)]
            fans = [(_user_id(fan), fan) for fan in handles]
            added += await self._seed_batch(creator_id, fans)
            if progress is not None:
                progress(last - start)
        return added

    async def _seed_batch(self, creator_id: str, fans: list[tuple[str, str]]) -> int:
        at = self._clock()
        # users and edges are independent rows: write them at once
        _, new_edges = await asyncio.gather(
            self._accounts.add_seeded_users_in_bulk(fans, Role.BUYER, at),
            self._follows.add_followers_in_bulk(creator_id, [fan[0] for fan in fans], at),
        )
        return new_edges
