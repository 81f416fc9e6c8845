"""Creators, products and drops, and the rules of a drop's lifecycle (no storage, no web)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec


class DropStatus(StrEnum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    SOLD_OUT = "sold_out"
    ENDED = "ended"
    CANCELLED = "cancelled"


TRANSITIONS: dict[DropStatus, frozenset[DropStatus]] = {
    DropStatus.SCHEDULED: frozenset({DropStatus.LIVE, DropStatus.ENDED, DropStatus.CANCELLED}),
    DropStatus.LIVE: frozenset({DropStatus.SOLD_OUT, DropStatus.ENDED, DropStatus.CANCELLED}),
    # a released unit (failed payment, expired reservation) puts a sold-out drop back on sale
    DropStatus.SOLD_OUT: frozenset({DropStatus.LIVE, DropStatus.ENDED, DropStatus.CANCELLED}),
    DropStatus.ENDED: frozenset(),
    DropStatus.CANCELLED: frozenset(),
}
"""Which status may follow which; `scheduled -> ended` is a window missed while no server ran."""


def can_move(current: DropStatus, target: DropStatus) -> bool:
    return target in TRANSITIONS[current]


def due_status(status: DropStatus, starts_at: float, ends_at: float, now: float) -> DropStatus:
    """The status the clock moves a drop to at `now` (the same status when nothing is due)."""
    if status in (DropStatus.LIVE, DropStatus.SOLD_OUT) and now >= ends_at:
        return DropStatus.ENDED
    if status is DropStatus.SCHEDULED and now >= ends_at:
        return DropStatus.ENDED
    if status is DropStatus.SCHEDULED and now >= starts_at:
        return DropStatus.LIVE
    return status


class Creator(msgspec.Struct, frozen=True):
    """A user who sells; `id` is that user's id."""

    id: str
    handle: str
    display_name: str
    bio: str
    created_at: datetime


class Product(msgspec.Struct, frozen=True):
    id: str
    creator_id: str
    name: str
    description: str
    image_url: str | None
    created_at: datetime


class Drop(msgspec.Struct, frozen=True):
    """A product on sale in a limited window with limited stock."""

    id: str
    creator_id: str
    product_id: str
    stock: int
    price_cents: int
    per_user_limit: int
    starts_at: datetime
    ends_at: datetime
    status: DropStatus
    created_at: datetime
    updated_at: datetime
