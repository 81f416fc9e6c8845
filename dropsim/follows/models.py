"""Follow edges and follow state as plain values (no storage, no web)."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Follower(msgspec.Struct, frozen=True):
    """A user who follows a given creator, and since when."""

    user_id: str
    followed_at: datetime


class Following(msgspec.Struct, frozen=True):
    """A creator a given user follows, and since when."""

    creator_id: str
    followed_at: datetime


class FollowState(msgspec.Struct, frozen=True):
    """Whether the caller follows `creator_id` after a follow or unfollow, and the new count."""

    creator_id: str
    following: bool
    follower_count: int


class FollowerCount(msgspec.Struct, frozen=True):
    """How many users follow `creator_id` (a stored counter, not a count of rows)."""

    creator_id: str
    followers: int
