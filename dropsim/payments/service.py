"""Payment use cases: charge an order at the provider, apply its signed callbacks, time out.

Every change of a payment goes through `_apply`: read the row, ask `models.step` what the signal
does to that status, compare-and-set exactly that move, and only the caller whose move landed
reports the outcome to the order service. So a callback racing the timeout, duplicated or late
callbacks, and retries of our own can interleave in any order and the order is settled once.

Timeouts are watched per process: the process that requested a charge sleeps until its
deadline and then tries `pending -> timed_out`; a callback handled by any other process wins or
loses that race through the same compare-and-set. If the requesting process dies, `recover`
(run at start-up and then periodically by every process) times out the payments it left open,
and settles again the payments that succeeded lately, which finishes a refund the dead process
had begun for an order whose hold had lapsed (the order service answers REFUND again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import msgspec

from dropsim.errors import InvalidRequest
from dropsim.eventlog import EventLog
from dropsim.events import PaymentFailed, PaymentSucceeded
from dropsim.ids import new_id
from dropsim.orders.models import Order
from dropsim.orders.service import Settlement
from dropsim.payments.models import (
    FINAL,
    PROVIDER_EVENTS,
    Effect,
    Payment,
    PaymentStatus,
    Signal,
    step,
)
from dropsim.payments.signing import verify
from dropsim.payments.store import PaymentStore
from dropsim.payments.transport import HttpAnswer, HttpPoster, NoAnswer, PooledPoster
from dropsim.timeutil import to_datetime

logger = logging.getLogger("dropsim.payments")

TIMEOUT_REASON = "provider_timeout"
UNREACHABLE_REASON = "provider_unreachable"
UNAVAILABLE_REASON = "provider_unavailable"
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_MAX_RACES = 8
RECOVERY_GRACE_SECONDS = 5.0
"""How long past the payment timeout an open payment must be before `recover` takes it as
abandoned (its pursuer would have timed it out by then, clocks differing a little)."""


class Settle(Protocol):
    """`OrderService.settle`: apply a payment outcome to an order (idempotent)."""

    def __call__(
        self, order_id: str, user_id: str, drop_id: str, *, succeeded: bool, reason: str = ""
    ) -> Awaitable[Settlement]: ...


class CallbackOutcome(StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    """This event id was processed before (or is being processed now)."""
    IGNORED = "ignored"
    """A well-signed event we have nothing to do with (unknown type or payment)."""


class _EventMetadata(msgspec.Struct):
    order_id: str
    user_id: str
    drop_id: str


class _EventData(msgspec.Struct):
    charge_id: str
    metadata: _EventMetadata
    failure_reason: str | None = None


class _Event(msgspec.Struct):
    id: str
    type: str
    data: _EventData


_decode_event = msgspec.json.Decoder(_Event).decode


@dataclass(frozen=True)
class Recovery:
    """What one `PaymentService.recover` pass did."""

    timed_out: int
    resettled: int
    failed: int
    """Payments it could not conclude this time (logged; the next pass tries again)."""


class ChargeRefused(Exception):
    """The provider would not take the request, or could not be reached often enough."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PaymentService:
    """Charges orders at the payment provider and turns its callbacks into order settlements.

    Call `connect_orders(order_service.settle)` (or pass `settle=`) before the first payment,
    and `await close()` on shutdown. Without `http`, it makes its own client, which times each
    provider request out after `attempt_timeout_seconds`; a given `http` keeps its own timeout.
    """

    def __init__(
        self,
        store: PaymentStore,
        events: EventLog,
        *,
        provider_url: str,
        callback_url: str,
        signing_secret: str,
        timeout_seconds: float,
        http: HttpPoster | None = None,
        settle: Settle | None = None,
        attempt_timeout_seconds: float = 5.0,
        max_attempts: int = 5,
        backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 2.0,
        signature_tolerance_seconds: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._events = events
        self._provider_url = provider_url.rstrip("/")
        self._callback_url = callback_url
        self._secret = signing_secret
        self._timeout = timeout_seconds
        self._owns_http = http is None
        self._http = http or PooledPoster(attempt_timeout_seconds)
        self._settle = settle
        self._max_attempts = max_attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._tolerance = signature_tolerance_seconds
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: dict[str, asyncio.Event] = {}
        self._closed = False

    def connect_orders(self, settle: Settle | Callable[..., Awaitable[Settlement]]) -> None:
        """Where outcomes are reported: `OrderService.settle`."""
        self._settle = settle

    # requesting
    async def request_payment(self, order: Order) -> None:
        """Start charging `order` and return at once: the payment row, the charge request and
        the timeout watch all run in a background task; the outcome reaches the order service
        through `settle`."""
        if self._closed:
            logger.warning("payment for %s not requested: the service is closing", order.id)
            return
        self._spawn(self._pursue(self._payment_of(order), self._deadline()))

    async def begin_payment(self, order: Order) -> None:
        """Record the payment of `order`, then charge it and watch its deadline in the
        background: what a payment worker does with a hand-off (`payments/handoff.py`). Returns
        once the row is written, so the hand-off can be acknowledged; raises if it could not be
        (the hand-off is then taken again). A payment recorded before (a hand-off taken twice)
        is not charged again: `recover` concludes it should its pursuer be gone."""
        if self._closed:
            raise RuntimeError("the payment service is closing")
        deadline = self._deadline()
        payment = self._payment_of(order)
        if not await self._store.insert(payment):
            logger.info("order %s has a payment already: not charging again", order.id)
            return
        self._spawn(self._charge_and_watch(payment, deadline))

    def _payment_of(self, order: Order) -> Payment:
        now = self._clock()
        return Payment(
            id=new_id("pay"),
            order_id=order.id,
            user_id=order.user_id,
            drop_id=order.drop_id,
            amount_cents=order.amount_cents,
            # scoped by user: keys are client-made, and two buyers may pick the same one
            idempotency_key=f"{order.user_id}:{order.idempotency_key}",
            status=PaymentStatus.REQUESTED,
            created_at=to_datetime(now),
            updated_at=to_datetime(now),
        )

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pursue(self, payment: Payment, deadline: float) -> None:
        """Record, charge, and watch the deadline (see the module docstring)."""
        try:
            if not await self._store.insert(payment):
                logger.warning(
                    "order %s has a payment already: not charging again", payment.order_id
                )
                return
        except Exception:
            # no row, no charge: the order's hold lapses and the reaper puts the unit back
            logger.exception("could not record the payment of order %s", payment.order_id)
            return
        await self._charge_and_watch(payment, deadline)

    async def _charge_and_watch(self, payment: Payment, deadline: float) -> None:
        """Charge a recorded payment, then wait for its outcome until `deadline`."""
        user_id, order_id = payment.user_id, payment.order_id
        finished = self._finished[order_id] = asyncio.Event()
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    charge_id = await self._create_charge(payment)
            except TimeoutError:
                pass  # no answer in time; the charge may exist all the same (a late success
                # is refunded)
            except ChargeRefused as refused:
                await self._apply(user_id, order_id, Signal.REFUSED, reason=refused.reason)
                return
            else:
                try:
                    await self._accepted(payment, charge_id)
                except Exception:
                    # only bookkeeping (callbacks carry the charge id): keep watching the clock
                    logger.exception("could not mark the payment of order %s pending", order_id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await finished.wait()
            if not finished.is_set():
                await self._apply(user_id, order_id, Signal.TIMED_OUT, reason=TIMEOUT_REASON)
        except Exception:
            logger.exception("payment of order %s stopped on an error", order_id)
        finally:
            if self._finished.get(order_id) is finished:
                del self._finished[order_id]

    async def _accepted(self, payment: Payment, charge_id: str) -> None:
        """Record the charge id: `requested -> pending`, batched with other acceptances. Should a
        callback have overtaken the provider's answer, the payment is already where `step`
        would leave it (`accepted` moves nothing else), and that callback woke the waiter if it
        came to this process; otherwise the deadline's `timed_out` finds the final status."""
        await self._store.accept(payment.user_id, payment.id, charge_id, self._clock())

    async def _create_charge(self, payment: Payment) -> str:
        """POST the charge until the provider answers it; the same Idempotency-Key every time,
        so a retry after a lost answer finds the first charge instead of making a second."""
        body = msgspec.json.encode(
            {
                "amount_cents": payment.amount_cents,
                "currency": "usd",
                "reference": payment.order_id,
                "metadata": {
                    "order_id": payment.order_id,
                    "user_id": payment.user_id,
                    "drop_id": payment.drop_id,
                },
                "callback_url": self._callback_url,
            }
        )
        response = await self._post("/v1/charges", body, payment.idempotency_key)
        try:
            charge_id = msgspec.json.decode(response.body)["id"]
        except (msgspec.DecodeError, KeyError, TypeError):
            raise ChargeRefused(UNAVAILABLE_REASON) from None
        if not isinstance(charge_id, str):
            raise ChargeRefused(UNAVAILABLE_REASON)
        return charge_id

    async def _refund(self, charge_id: str) -> None:
        body = msgspec.json.encode({"charge_id": charge_id})
        await self._post("/v1/refunds", body, f"refund:{charge_id}")

    async def _post(self, path: str, body: bytes, key: str) -> HttpAnswer:
        """POST with retries on no answer, 5xx and 408/409/425/429 (exponential back-off with
        jitter); a 2xx is returned, another 4xx raises ChargeRefused at once."""
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        reason = UNREACHABLE_REASON
        for attempt in range(self._max_attempts):
            if attempt:
                ceiling = min(self._max_backoff, self._backoff * 2 ** (attempt - 1))
                await asyncio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
            try:
                response = await self._http.post(f"{self._provider_url}{path}", body, headers)
            except NoAnswer as exc:
                logger.info(
                    "provider %s%s: %s (attempt %d)", self._provider_url, path, exc, attempt + 1
                )
                reason = UNREACHABLE_REASON
                continue
            if response.is_success:
                return response
            if response.status >= 500 or response.status in _RETRYABLE_STATUS:
                reason = UNAVAILABLE_REASON
                continue
            raise ChargeRefused(f"provider_rejected_{response.status}")
        raise ChargeRefused(reason)

    # callbacks
    async def handle_callback(
        self, raw_body: bytes, signature_header: str | None
    ) -> CallbackOutcome:
        """Verify, deduplicate and apply one provider event.

        Raises SignatureError (400: missing/malformed/bad/stale signature) or InvalidRequest
        (`malformed_event`) and changes nothing then. An error while applying the event un-claims
        it and propagates, so the provider's redelivery is processed again.
        """
        now = self._clock()
        verify(self._secret, raw_body, signature_header, now, self._tolerance)
        try:
            event = _decode_event(raw_body)
        except msgspec.DecodeError as exc:
            raise InvalidRequest(f"not a provider event: {exc}", code="malformed_event") from None
        signal = PROVIDER_EVENTS.get(event.type)
        if signal is None:
            return CallbackOutcome.IGNORED
        if not await self._store.claim_callback(event.id, now):
            return CallbackOutcome.DUPLICATE
        meta = event.data.metadata
        try:
            applied = await self._apply(
                meta.user_id,
                meta.order_id,
                signal,
                charge_id=event.data.charge_id,
                reason=event.data.failure_reason or "charge_failed",
            )
        except BaseException:
            await asyncio.shield(self._store.forget_callback(event.id))
            raise
        return CallbackOutcome.PROCESSED if applied else CallbackOutcome.IGNORED

    # the state machine, applied
    async def _apply(
        self,
        user_id: str,
        order_id: str,
        signal: Signal,
        *,
        charge_id: str | None = None,
        reason: str = "",
    ) -> bool:
        """Apply `signal` to the payment of `order_id`; False if there is no such payment."""
        for _ in range(_MAX_RACES):
            payment = await self._store.payment_of_order(user_id, order_id)
            if payment is None:
                logger.warning("%s for unknown payment of order %s", signal.value, order_id)
                return False
            decided = step(payment.status, signal)
            charge_id = charge_id or payment.provider_charge_id
            if decided.effect is Effect.REFUND:
                # refund first (idempotent at the provider), then record it: a crash in between
                # leaves the row as it was and the redelivered success refunds again
                await self._refund_charge(charge_id, order_id)
            moved = decided.target is not None and decided.target is not payment.status
            if moved:
                assert decided.target is not None
                failure = reason if decided.effect is Effect.RELEASE else None
                if not await self._store.move(
                    user_id,
                    payment.id,
                    [payment.status],
                    decided.target,
                    self._clock(),
                    charge_id=charge_id,
                    reason=failure,
                ):
                    continue  # someone else moved it first: decide again from what they did
            final = decided.target if moved else payment.status
            if final in FINAL and (waiter := self._finished.get(order_id)) is not None:
                waiter.set()
            if decided.effect is Effect.CONFIRM:
                await self._confirm(payment, charge_id, announce=moved)
            elif decided.effect is Effect.RELEASE and moved:
                await self._release(payment, reason)
            return True
        raise RuntimeError(f"payment of order {order_id} kept changing under {signal.value}")

    async def _confirm(self, payment: Payment, charge_id: str | None, *, announce: bool) -> None:
        settlement = await self._report(payment, succeeded=True)
        if announce and settlement is not Settlement.REFUND:
            await self._events.publish(
                PaymentSucceeded(
                    payment_id=payment.id,
                    order_id=payment.order_id,
                    user_id=payment.user_id,
                    drop_id=payment.drop_id,
                    amount_cents=payment.amount_cents,
                )
            )
        if settlement is Settlement.REFUND:
            # paid, but the hold had lapsed and the unit went back: return the money
            await self._refund_charge(charge_id, payment.order_id)
            await self._store.move(
                payment.user_id,
                payment.id,
                [PaymentStatus.SUCCEEDED],
                PaymentStatus.REFUNDED,
                self._clock(),
                reason="reservation_expired",
            )

    async def _release(self, payment: Payment, reason: str) -> None:
        await self._report(payment, succeeded=False, reason=reason)
        await self._events.publish(
            PaymentFailed(
                payment_id=payment.id,
                order_id=payment.order_id,
                user_id=payment.user_id,
                drop_id=payment.drop_id,
                reason=reason,
            )
        )

    async def _report(self, payment: Payment, *, succeeded: bool, reason: str = "") -> Settlement:
        """Tell the order service; it is idempotent, so a failed call is simply tried again."""
        if self._settle is None:
            raise RuntimeError("PaymentService.connect_orders() was not called")
        for attempt in range(3):
            try:
                return await self._settle(
                    payment.order_id,
                    payment.user_id,
                    payment.drop_id,
                    succeeded=succeeded,
                    reason=reason,
                )
            except Exception:
                if attempt == 2:
                    raise
                logger.warning(
                    "settling order %s failed; retrying", payment.order_id, exc_info=True
                )
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def _refund_charge(self, charge_id: str | None, order_id: str) -> None:
        if charge_id is None:
            raise RuntimeError(f"cannot refund order {order_id}: no charge id known")
        logger.info("refunding charge %s of order %s", charge_id, order_id)
        await self._refund(charge_id)

    # recovery
    async def recover(self, *, resettle_seconds: float = 0.0) -> Recovery:
        """Conclude what a dead process left behind: payments still open a grace period past
        the payment timeout are timed out (their pursuer is gone; a late success is refunded as
        for any timeout), and with `resettle_seconds` the payments that succeeded within that
        many seconds are reported to the order service again (idempotent there; it answers
        REFUND for an order whose hold lapsed, and the refund is made, again if need be)."""
        now = self._clock()
        timed_out = resettled = failed = 0
        for payment in await self._store.unfinished(now - self._timeout - RECOVERY_GRACE_SECONDS):
            if payment.order_id in self._finished:
                continue  # this process is still pursuing it
            logger.warning("timing out the abandoned payment of order %s", payment.order_id)
            try:
                await self._apply(
                    payment.user_id, payment.order_id, Signal.TIMED_OUT, reason=TIMEOUT_REASON
                )
                timed_out += 1
            except Exception:  # one payment that fails must not hold up the others
                logger.exception("could not time out the payment of order %s", payment.order_id)
                failed += 1
        if resettle_seconds > 0:
            for payment in await self._store.succeeded_since(now - resettle_seconds):
                try:
                    await self._confirm(payment, payment.provider_charge_id, announce=False)
                    resettled += 1
                except Exception:
                    logger.exception("could not settle order %s again", payment.order_id)
                    failed += 1
        return Recovery(timed_out=timed_out, resettled=resettled, failed=failed)

    # audit
    async def prune_callbacks(self, older_than_seconds: float) -> int:
        """Forget provider event ids older than the provider's redelivery window (the replay
        guard only has to outlive the redeliveries)."""
        return await self._store.prune_callbacks(time.time() - older_than_seconds)

    async def payments_of_drop(self, drop_id: str) -> list[Payment]:
        """Every payment of a drop, from every shard."""
        return await self._store.payments_of_drop(drop_id)

    async def succeeded_payments(self, drop_id: str) -> list[tuple[str, str, str]]:
        """(payment id, order id, user id) of a drop's succeeded (not refunded) payments."""
        return await self._store.succeeded_payments(drop_id)

    async def close(self) -> None:
        """Cancel background work (pending timeouts are left to the order reaper) and close the
        HTTP client if this service made it."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_http:
            await self._http.close()
