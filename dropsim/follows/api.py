"""HTTP routes of the follow service: follow and unfollow as the caller, list both directions."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery
from litestar.security.jwt import Token

from dropsim.follows.models import Follower, FollowerCount, Following, FollowState
from dropsim.follows.service import FollowService
from dropsim.gateway.tokens import Principal
from dropsim.pagination import Page, PageSize, decode_cursor, page_of

AuthedRequest = Request[Principal, Token, State]


@put("/me/following/{creator_id:str}")
async def follow(
    creator_id: FromPath[str],
    request: AuthedRequest,
    follow_service: NamedDependency[FollowService],
) -> FollowState:
    """Follow a creator (idempotent)."""
    return await follow_service.follow(request.user.user_id, creator_id)


@delete("/me/following/{creator_id:str}", status_code=200)
async def unfollow(
    creator_id: FromPath[str],
    request: AuthedRequest,
    follow_service: NamedDependency[FollowService],
) -> FollowState:
    """Stop following a creator (idempotent)."""
    return await follow_service.unfollow(request.user.user_id, creator_id)


@get("/me/following")
async def list_following(
    request: AuthedRequest,
    follow_service: NamedDependency[FollowService],
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Following]:
    found = await follow_service.following(request.user.user_id, decode_cursor(cursor), limit + 1)
    return page_of(found, limit, key=lambda following: following.creator_id)


@get("/creators/{creator_id:str}/followers")
async def list_followers(
    creator_id: FromPath[str],
    follow_service: NamedDependency[FollowService],
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Follower]:
    found = await follow_service.followers(creator_id, decode_cursor(cursor), limit + 1)
    return page_of(found, limit, key=lambda follower: follower.user_id)


@get("/creators/{creator_id:str}/followers/count", exclude_from_auth=True)
async def count_followers(
    creator_id: FromPath[str], follow_service: NamedDependency[FollowService]
) -> FollowerCount:
    return FollowerCount(
        creator_id=creator_id, followers=await follow_service.follower_count(creator_id)
    )


def follows_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[follow, unfollow, list_following, list_followers, count_followers],
        dependencies=dependencies,
        tags=["follows"],
    )
