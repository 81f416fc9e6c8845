"""Orders and their state machine: which payment outcome may move an order where (pure rules)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec


class OrderStatus(StrEnum):
    PENDING_PAYMENT = "pending_payment"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    EXPIRED = "expired"


FINAL = frozenset({OrderStatus.CONFIRMED, OrderStatus.FAILED, OrderStatus.EXPIRED})
"""Once final, an order never moves again: late or repeated callbacks are no-ops, which is
what makes duplicate and out-of-order callbacks commute."""


class Rejection(StrEnum):
    """Why the reservation script refused a unit (each its own problem code)."""

    NOT_LIVE = "drop_not_live"
    LIMIT_REACHED = "limit_reached"
    SOLD_OUT = "sold_out"


REJECTION_DETAIL = {
    Rejection.NOT_LIVE: "this drop is not on sale right now",
    Rejection.LIMIT_REACHED: "you hold as many units of this drop as one buyer may",
    Rejection.SOLD_OUT: "this drop is sold out",
}


class Order(msgspec.Struct, frozen=True):
    """One buyer's purchase of `quantity` units of a drop; `id` is also its reservation id."""

    id: str
    user_id: str
    drop_id: str
    quantity: int
    amount_cents: int
    idempotency_key: str
    status: OrderStatus
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    """When the reservation lapses if no payment outcome arrived."""
