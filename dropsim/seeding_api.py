"""Admin routes for seeding, so the CLI can seed a running server whose KV store is in memory."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Router, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody

from dropsim.accounts.models import Role
from dropsim.gateway.auth import requires
from dropsim.seeding import Seeder

MAX_FOLLOWERS_PER_CALL = 200_000

# 29 characters leaves room for the "-fan0000000" of fan handles within the 40 a handle may have
SeedHandle = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_.-]{2,29}$")]


class SeedCreator(msgspec.Struct, forbid_unknown_fields=True):
    handle: SeedHandle
    display_name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class SeededCreator(msgspec.Struct):
    creator_id: str


class SeedFollowers(msgspec.Struct, forbid_unknown_fields=True):
    creator_id: str
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_FOLLOWERS_PER_CALL)]
    start: Annotated[int, msgspec.Meta(ge=0)] = 0


class SeededFollowers(msgspec.Struct):
    added: int
    """Edges that did not exist before this call (0 when the range was seeded already)."""
    creator_id: str


@post("/admin/seed/creators", guards=[requires(Role.ADMIN)], status_code=200)
async def seed_creator(
    data: JSONBody[SeedCreator], seeder: NamedDependency[Seeder]
) -> SeededCreator:
    """Create (or find) the creator with this handle."""
    return SeededCreator(creator_id=await seeder.seed_creator(data.handle, data.display_name))


@post("/admin/seed/followers", guards=[requires(Role.ADMIN)], status_code=200)
async def seed_followers(
    data: JSONBody[SeedFollowers], seeder: NamedDependency[Seeder]
) -> SeededFollowers:
    """Make fans `start` .. `start + count - 1` follow the creator (idempotent)."""
    added = await seeder.seed_followers(data.creator_id, data.count, start=data.start)
    return SeededFollowers(added=added, creator_id=data.creator_id)


def seeding_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[seed_creator, seed_followers],
        dependencies=dependencies,
        tags=["admin"],
    )
