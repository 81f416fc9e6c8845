"""Users and roles: plain values, no storage or web imports."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Role(StrEnum):
    """What a user may do: buyers buy, creators also sell, admins operate the system."""

    BUYER = "buyer"
    CREATOR = "creator"
    ADMIN = "admin"


class User(msgspec.Struct, frozen=True):
    id: str
    handle: str
    role: Role
    created_at: float
    email: str | None = None
