"""Payments and their state machine: which signal may move a payment where (pure rules).

Signals come from the provider's callbacks (`charge.*`) and from this service itself (the charge
request was accepted or refused, the wait timed out). `step` is total over status x signal, so
duplicate, late and out-of-order signals commute: a final status never changes, except that
money the provider took is returned (`succeeded`, `failed` or `timed_out` -> `refunded`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import msgspec


class PaymentStatus(StrEnum):
    REQUESTED = "requested"
    """Recorded; the charge request is on its way to the provider."""
    PENDING = "pending"
    """The provider accepted the charge; its outcome comes by callback."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REFUNDED = "refunded"


OPEN = frozenset({PaymentStatus.REQUESTED, PaymentStatus.PENDING})
FINAL = frozenset(set(PaymentStatus) - OPEN)


class Signal(StrEnum):
    """Something that happened to a payment. The `charge.*` values are provider event types."""

    ACCEPTED = "request.accepted"
    """The provider answered the charge request with a charge id."""
    REFUSED = "request.refused"
    """The charge request failed for good (rejected, or the provider stayed unreachable)."""
    TIMED_OUT = "wait.timed_out"
    """No final callback arrived within the payment timeout."""
    PENDING = "charge.pending"
    SUCCEEDED = "charge.succeeded"
    FAILED = "charge.failed"
    REFUNDED = "charge.refunded"


PROVIDER_EVENTS = {
    signal.value: signal
    for signal in (Signal.PENDING, Signal.SUCCEEDED, Signal.FAILED, Signal.REFUNDED)
}
"""Provider event type -> signal; other event types are ignored, as webhook consumers should."""


class Effect(StrEnum):
    """What the service must do besides moving the status."""

    NONE = "none"
    CONFIRM = "confirm"
    """Report success to the order service (idempotent there)."""
    RELEASE = "release"
    """Report failure to the order service, so the unit goes back."""
    REFUND = "refund"
    """Money was taken for a unit already released: refund the charge, then mark `refunded`."""


@dataclass(frozen=True, slots=True)
class Step:
    target: PaymentStatus | None
    """The status to compare-and-set from the current one; None leaves the status alone."""
    effect: Effect = Effect.NONE


_STAY = Step(None)

_FROM_OPEN = {
    Signal.ACCEPTED: Step(PaymentStatus.PENDING),
    Signal.PENDING: Step(PaymentStatus.PENDING),
    Signal.SUCCEEDED: Step(PaymentStatus.SUCCEEDED, Effect.CONFIRM),
    Signal.FAILED: Step(PaymentStatus.FAILED, Effect.RELEASE),
    Signal.REFUSED: Step(PaymentStatus.FAILED, Effect.RELEASE),
    Signal.TIMED_OUT: Step(PaymentStatus.TIMED_OUT, Effect.RELEASE),
    # a refund we never asked for cannot precede the success it refunds: ignore it
    Signal.REFUNDED: _STAY,
}

_RELEASED = {
    Signal.SUCCEEDED: Step(PaymentStatus.REFUNDED, Effect.REFUND),
    Signal.REFUNDED: Step(PaymentStatus.REFUNDED),
}


def step(status: PaymentStatus, signal: Signal) -> Step:
    """What `signal` does to a payment in `status`.

    - open (`requested`, `pending`): the first outcome wins; `accepted`/`charge.pending` only
      move `requested` to `pending`.
    - `succeeded`: a repeated success is reported again (the order service's settle is
      idempotent, and that is how a report lost to an error heals when the provider redelivers);
      `charge.refunded` confirms our refund; anything else is stale.
    - `failed`/`timed_out`: the unit went back, so a late success must be refunded;
      `charge.refunded` confirms that refund; anything else is stale.
    - `refunded`: nothing moves it.
    """
    if status in OPEN:
        target = _FROM_OPEN[signal]
        if target.target is PaymentStatus.PENDING and status is PaymentStatus.PENDING:
            return _STAY
        return target
    if status is PaymentStatus.SUCCEEDED:
        if signal is Signal.SUCCEEDED:
            return Step(None, Effect.CONFIRM)
        if signal is Signal.REFUNDED:
            return Step(PaymentStatus.REFUNDED)
        return _STAY
    if status in (PaymentStatus.FAILED, PaymentStatus.TIMED_OUT):
        return _RELEASED.get(signal, _STAY)
    return _STAY


class Payment(msgspec.Struct, frozen=True):
    """One charge attempt for one order (`order_id` is unique: an order is paid at most once)."""

    id: str
    order_id: str
    user_id: str
    drop_id: str
    amount_cents: int
    idempotency_key: str
    """Sent to the provider as `Idempotency-Key` on every attempt: retries never charge twice."""
    status: PaymentStatus
    created_at: datetime
    updated_at: datetime
    provider_charge_id: str | None = None
    failure_reason: str = ""
