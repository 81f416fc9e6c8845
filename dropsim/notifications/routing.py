"""Who gets an event: one rule, used both for live delivery (index lookups) and for replay
after a reconnect (a check per stream), so the two can never disagree."""

from __future__ import annotations

from enum import Enum

from dropsim.events import (
    DropBackOnSale,
    DropCancelled,
    DropEnded,
    DropSoldOut,
    DropWentLive,
    OrderConfirmed,
    OrderExpired,
    OrderFailed,
    OrderReserved,
)


class Audience(Enum):
    FOLLOWERS = "followers"
    """Streams of users who follow the event's creator."""
    WATCHERS = "watchers"
    """Streams watching the event's drop."""
    OWNER = "owner"
    """Streams of the user the event is about."""


_AUDIENCES: dict[str, tuple[tuple[Audience, str], ...]] = {
    DropWentLive.type: ((Audience.FOLLOWERS, "creator_id"), (Audience.WATCHERS, "drop_id")),
    DropSoldOut.type: ((Audience.WATCHERS, "drop_id"),),
    DropBackOnSale.type: ((Audience.WATCHERS, "drop_id"),),
    DropEnded.type: ((Audience.WATCHERS, "drop_id"),),
    DropCancelled.type: ((Audience.FOLLOWERS, "creator_id"), (Audience.WATCHERS, "drop_id")),
    OrderConfirmed.type: ((Audience.OWNER, "user_id"),),
    OrderFailed.type: ((Audience.OWNER, "user_id"),),
    OrderExpired.type: ((Audience.OWNER, "user_id"),),
}

STOCK_MOVERS = frozenset(
    {
        OrderReserved.type,
        OrderFailed.type,
        OrderExpired.type,
        DropWentLive.type,
        DropBackOnSale.type,
        DropSoldOut.type,
    }
)
"""Events after which a drop's available stock may differ (watchers get a coalesced update)."""


def audiences(event_type: str, data: dict[str, object]) -> list[tuple[Audience, str]]:
    """The (audience, key) pairs an event goes to; empty for events no stream receives."""
    return [
        (audience, str(data[field]))
        for audience, field in _AUDIENCES.get(event_type, ())
        if field in data
    ]
