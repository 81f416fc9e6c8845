"""Domain events: typed, past-tense records; the event log wraps each in `{id, type, at, data}`."""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened. `type` names it on the wire; fields are its `data`."""

    type: ClassVar[str]


class CreatorRegistered(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "creator.registered"
    creator_id: str
    handle: str


class ProductCreated(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "product.created"
    product_id: str
    creator_id: str


class DropScheduled(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "drop.scheduled"
    drop_id: str
    creator_id: str
    starts_at: float
    ends_at: float


class DropWentLive(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "drop.went_live"
    drop_id: str
    creator_id: str
    product_id: str
    stock: int
    price_cents: int
    starts_at: float
    ends_at: float


class DropSoldOut(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "drop.sold_out"
    drop_id: str
    creator_id: str


class DropBackOnSale(Event, frozen=True, kw_only=True):
    """A sold-out drop has a unit again (a payment failed or a hold lapsed)."""

    type: ClassVar[str] = "drop.back_on_sale"
    drop_id: str
    creator_id: str


class DropEnded(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "drop.ended"
    drop_id: str
    creator_id: str


class DropCancelled(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "drop.cancelled"
    drop_id: str
    creator_id: str


class CreatorFollowed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "creator.followed"
    creator_id: str
    user_id: str


class CreatorUnfollowed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "creator.unfollowed"
    creator_id: str
    user_id: str


class Envelope(msgspec.Struct, frozen=True):
    """An event as stored and delivered: its log id, type, publish time (epoch s) and data."""

    id: str
    type: str
    at: float
    data: dict[str, object]


class OrderReserved(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "order.reserved"
    order_id: str
    user_id: str
    drop_id: str
    quantity: int
    available: int


class OrderConfirmed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "order.confirmed"
    order_id: str
    user_id: str
    drop_id: str


class OrderFailed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "order.failed"
    order_id: str
    user_id: str
    drop_id: str
    reason: str


class OrderExpired(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "order.expired"
    order_id: str
    user_id: str
    drop_id: str


class PaymentSucceeded(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "payment.succeeded"
    payment_id: str
    order_id: str
    user_id: str
    drop_id: str
    amount_cents: int


class PaymentFailed(Event, frozen=True, kw_only=True):
    type: ClassVar[str] = "payment.failed"
    payment_id: str
    order_id: str
    user_id: str
    drop_id: str
    reason: str
