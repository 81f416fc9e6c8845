"""The payment service against the simulated provider on loopback: what the order service may
rely on is that each order is settled exactly once, whatever the provider does (duplicate,
stale, late or lost callbacks, lost responses, being down), and that money taken for a unit
that went back is refunded."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import pytest
from conftest import POSTGRES_ENV, real_url, reset_postgres
from litestar import Litestar
from litestar.di import Provide

from dropsim.backends import open_database
from dropsim.backends.memory import open_memory_kv
from dropsim.eventlog import EventLog
from dropsim.gateway.problems import EXCEPTION_HANDLERS
from dropsim.orders.models import Order, OrderStatus
from dropsim.orders.service import Settlement
from dropsim.payments.api import payments_router
from dropsim.payments.models import (
    FINAL,
    OPEN,
    Effect,
    Payment,
    PaymentStatus,
    Signal,
    step,
)
from dropsim.payments.provider import (
    DECLINE_REASONS,
    EmbeddedProvider,
    EventData,
    LoopbackServer,
    ProviderConfig,
    ProviderEvent,
    SimulatedProvider,
)
from dropsim.payments.service import PaymentService
from dropsim.payments.signing import SIGNATURE_HEADER, sign
from dropsim.payments.store import MIGRATIONS, PaymentStore
from dropsim.payments.transport import HttpAnswer, PooledPoster
from dropsim.testing import free_port

SECRET = "payments-test-secret"
SHARDS = 2
FAST = ProviderConfig(
    signing_secret=SECRET,
    latency_median_ms=5,
    latency_p99_ms=20,
    failure_rate=0.0,
    duplicate_rate=0.0,
    out_of_order_rate=0.0,
    callback_loss_rate=0.0,
    seed=11,
    callback_backoff_seconds=0.01,
)


def an_order(user_id: str = "usr_1", key: str = "key-1", drop_id: str = "drp_1") -> Order:
    now = datetime.now(UTC)
    return Order(
        id=f"ord_{user_id}_{key}",
        user_id=user_id,
        drop_id=drop_id,
        quantity=1,
        amount_cents=2500,
        idempotency_key=key,
        status=OrderStatus.PENDING_PAYMENT,
        created_at=now,
        updated_at=now,
        expires_at=now + timedelta(seconds=60),
    )


@dataclass
class SettleRecorder:
    """Stands in for OrderService.settle and remembers every call."""

    calls: list[tuple[str, str, str, bool, str]] = field(default_factory=list)
    on_success: Settlement = Settlement.CONFIRMED
    unreachable_for: set[str] = field(default_factory=set)
    """Order ids whose settlement fails (the order service cannot be reached for them)."""

    async def __call__(
        self, order_id: str, user_id: str, drop_id: str, *, succeeded: bool, reason: str = ""
    ) -> Settlement:
        if order_id in self.unreachable_for:
            raise ConnectionError(f"cannot settle {order_id}")
        self.calls.append((order_id, user_id, drop_id, succeeded, reason))
        return self.on_success if succeeded else Settlement.RELEASED


@dataclass(frozen=True)
class SentRequest:
    path: str
    headers: Mapping[str, str]


class RecordingPoster(PooledPoster):
    """The service's HTTP client, keeping a note of each request it sends."""

    def __init__(self, sent: list[SentRequest]) -> None:
        super().__init__(5.0)
        self._sent = sent

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> HttpAnswer:
        self._sent.append(SentRequest(urlsplit(url).path, dict(headers)))
        return await super().post(url, body, headers)


@dataclass
class Rig:
    service: PaymentService
    store: PaymentStore
    settle: SettleRecorder
    events: EventLog
    callback_url: str
    provider: SimulatedProvider | None
    requests: list[SentRequest]
    """Every request the service sent to the provider."""

    async def status(self, order: Order) -> PaymentStatus | None:
        found = await self.store.payment_of_order(order.user_id, order.id)
        return None if found is None else found.status

    async def wait_for(
        self, order: Order, *statuses: PaymentStatus, within: float = 5.0
    ) -> Payment:
        deadline = time.monotonic() + within
        while True:
            found = await self.store.payment_of_order(order.user_id, order.id)
            if found is not None and found.status in statuses:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"payment is {found and found.status}, not {statuses}")
            await asyncio.sleep(0.01)

    async def event_types(self) -> list[str]:
        return [envelope.type for envelope in await self.events.read_after()]

    async def post_callback(self, body: bytes, header: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json"}
        if header is not None:
            headers[SIGNATURE_HEADER] = header
        async with httpx.AsyncClient() as client:
            return await client.post(self.callback_url, content=body, headers=headers)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/pay-{{shard}}.db"
    url = real_url(POSTGRES_ENV, "PostgreSQL")
    reset_postgres(url, SHARDS)
    return url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[PaymentStore]:
    db = await open_database(database_url, SHARDS)
    await db.migrate(MIGRATIONS)
    yield PaymentStore(db)
    await db.close()


MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(store: PaymentStore) -> AsyncIterator[MakeRig]:
    """Build the service, a callback server in front of it, and (unless `provider=None`) a
    simulated provider with FAST settings changed by `provider={...}`."""
    cleanups: list[Callable[[], Awaitable[None]]] = []

    async def make(
        provider: dict[str, Any] | None = None,
        *,
        provider_url: str | None = None,
        timeout_seconds: float = 5.0,
        **options: Any,
    ) -> Rig:
        holder: list[PaymentService] = []
        callbacks = LoopbackServer(
            Litestar(
                route_handlers=[payments_router()],
                dependencies={"payment_service": Provide(lambda: holder[0], sync_to_thread=False)},
                exception_handlers=EXCEPTION_HANDLERS,
                openapi_config=None,
            )
        )
        await callbacks.start()
        cleanups.append(callbacks.stop)
        simulated = None
        if provider_url is None:
            server = EmbeddedProvider(replace(FAST, **(provider or {})))
            await server.start()
            cleanups.append(server.stop)
            provider_url, simulated = server.url, server.provider
        requests: list[SentRequest] = []
        http = RecordingPoster(requests)
        cleanups.append(http.close)
        kv = open_memory_kv()
        cleanups.append(kv.aclose)
        events = EventLog(kv)
        settle = SettleRecorder()
        service = PaymentService(
            store,
            events,
            provider_url=provider_url,
            callback_url=f"{callbacks.url}/v1/payments/callback",
            signing_secret=SECRET,
            timeout_seconds=timeout_seconds,
            http=http,
            settle=settle,
            **options,
        )
        holder.append(service)
        cleanups.append(service.close)
        return Rig(
            service,
            store,
            settle,
            events,
            f"{callbacks.url}/v1/payments/callback",
            simulated,
            requests,
        )

    yield make
    for cleanup in reversed(cleanups):
        await cleanup()


def event_for(
    order: Order, charge_id: str, kind: str = "charge.succeeded", event_id: str = "evt_test"
) -> bytes:
    return msgspec.json.encode(
        ProviderEvent(
            id=event_id,
            type=kind,
            created=int(time.time()),
            data=EventData(
                charge_id=charge_id,
                reference=order.id,
                amount_cents=order.amount_cents,
                currency="usd",
                metadata={"order_id": order.id, "user_id": order.user_id, "drop_id": order.drop_id},
            ),
        )
    )


async def settled_quietly(rig: Rig, calls: int = 1, within: float = 5.0) -> None:
    """Wait until `calls` settlements were made, then a little longer for any extra one."""
    deadline = time.monotonic() + within
    while len(rig.settle.calls) < calls:
        assert time.monotonic() < deadline, f"settle called {len(rig.settle.calls)} times"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)


# the state machine on its own


SIGNALS_OF_A_SUCCESS = [Signal.ACCEPTED, Signal.PENDING, Signal.SUCCEEDED, Signal.SUCCEEDED]


@pytest.mark.parametrize("order", sorted(set(itertools.permutations(SIGNALS_OF_A_SUCCESS))))
def test_success_signals_commute(order: tuple[Signal, ...]) -> None:
    status, reports = PaymentStatus.REQUESTED, []
    for signal in order:
        decided = step(status, signal)
        if decided.effect is Effect.CONFIRM and decided.target is not None:
            reports.append("confirmed")
        status = decided.target or status
    assert status is PaymentStatus.SUCCEEDED
    assert reports == ["confirmed"]


@pytest.mark.parametrize(
    "order",
    sorted(set(itertools.permutations([Signal.ACCEPTED, Signal.SUCCEEDED, Signal.TIMED_OUT]))),
)
def test_a_success_racing_the_timeout_is_either_kept_or_refunded(order: tuple[Signal, ...]) -> None:
    status, effects = PaymentStatus.REQUESTED, []
    for signal in order:
        decided = step(status, signal)
        moved = decided.target is not None and decided.target is not status
        if decided.effect is not Effect.NONE and (moved or decided.effect is Effect.REFUND):
            effects.append(decided.effect)
        status = decided.target or status
    if order.index(Signal.SUCCEEDED) < order.index(Signal.TIMED_OUT):
        assert (status, effects) == (PaymentStatus.SUCCEEDED, [Effect.CONFIRM])
    else:
        assert (status, effects) == (PaymentStatus.REFUNDED, [Effect.RELEASE, Effect.REFUND])


@pytest.mark.parametrize("final", sorted(FINAL))
@pytest.mark.parametrize("signal", list(Signal))
def test_a_final_status_only_ever_moves_to_refunded(final: PaymentStatus, signal: Signal) -> None:
    assert step(final, signal).target in (None, PaymentStatus.REFUNDED)


# the service against the provider


async def test_a_success_settles_once_although_the_provider_duplicates_it(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(provider={"duplicate_rate": 1.0})
    order = an_order()

    await rig.service.request_payment(order)

    payment = await rig.wait_for(order, PaymentStatus.SUCCEEDED)
    await settled_quietly(rig)
    assert rig.provider is not None
    assert rig.provider.deliveries == 2
    assert rig.settle.calls == [(order.id, order.user_id, order.drop_id, True, "")]
    assert payment.provider_charge_id in rig.provider.charges
    assert payment.amount_cents == 2500
    assert await rig.event_types() == ["payment.succeeded"]
    assert await rig.service.succeeded_payments(order.drop_id) == [
        (payment.id, order.id, order.user_id)
    ]
    assert [found.id for found in await rig.service.payments_of_drop(order.drop_id)] == [payment.id]


async def test_the_idempotency_key_reaches_the_provider_scoped_by_user(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig()
    order = an_order(user_id="usr_42", key="client-key-7")

    await rig.service.request_payment(order)

    payment = await rig.wait_for(order, PaymentStatus.SUCCEEDED)
    assert rig.provider is not None
    assert rig.provider.charges[str(payment.provider_charge_id)].idempotency_key == (
        "usr_42:client-key-7"
    )
    assert rig.requests[0].headers["Idempotency-Key"] == "usr_42:client-key-7"


async def test_a_lost_response_is_retried_with_the_same_key_and_charges_once(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(provider={"lost_response_rate": 1.0}, backoff_seconds=0.01)
    order = an_order()

    await rig.service.request_payment(order)

    await rig.wait_for(order, PaymentStatus.SUCCEEDED)
    await settled_quietly(rig)
    assert rig.provider is not None
    assert len(rig.provider.charges) == 1
    assert [request.headers["Idempotency-Key"] for request in rig.requests] == ["usr_1:key-1"] * 2
    assert [call[3] for call in rig.settle.calls] == [True]


@pytest.mark.parametrize("declined", [False, True])
async def test_out_of_order_and_duplicate_callbacks_give_one_outcome(
    make_rig: MakeRig, declined: bool
) -> None:
    rig = await make_rig(
        provider={
            "out_of_order_rate": 1.0,
            "duplicate_rate": 1.0,
            "failure_rate": 1.0 if declined else 0.0,
        }
    )
    orders = [an_order(key=f"k{index}") for index in range(5)]

    for order in orders:
        await rig.service.request_payment(order)

    final = PaymentStatus.FAILED if declined else PaymentStatus.SUCCEEDED
    for order in orders:
        await rig.wait_for(order, final)
    assert rig.provider is not None
    # outcome, its copy, then the stale charge.pending: all delivered, all acknowledged
    deadline = time.monotonic() + 5
    while rig.provider.deliveries < 3 * len(orders):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert rig.provider.deliveries == 3 * len(orders)
    for order in orders:
        assert await rig.status(order) is final
    assert sorted(call[0] for call in rig.settle.calls) == sorted(order.id for order in orders)
    assert {call[3] for call in rig.settle.calls} == {not declined}
    if declined:
        assert {call[4] for call in rig.settle.calls} <= set(DECLINE_REASONS)
        assert (await rig.event_types()).count("payment.failed") == len(orders)


async def test_bad_missing_and_stale_signatures_are_refused_and_change_nothing(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(provider={"callback_loss_rate": 1.0}, timeout_seconds=30)
    order = an_order()
    await rig.service.request_payment(order)
    payment = await rig.wait_for(order, PaymentStatus.PENDING)
    body = event_for(order, str(payment.provider_charge_id))
    now = time.time()

    attempts: dict[str, list[str | None]] = {
        "bad_signature": [
            sign("not-the-secret", body, now),
            sign(SECRET, body.replace(b"2500", b"1"), now),
        ],
        "stale_signature": [sign(SECRET, body, now - 1000), sign(SECRET, body, now + 1000)],
        "missing_signature": [None],
        "malformed_signature": ["v1=abc"],
    }
    for code, headers in attempts.items():
        for header in headers:
            answer = await rig.post_callback(body, header)
            assert answer.status_code == 400, answer.text
            assert answer.json()["code"] == code
    tampered = await rig.post_callback(body.replace(b"2500", b"1"), sign(SECRET, body, now))
    assert tampered.json()["code"] == "bad_signature"

    assert await rig.status(order) is PaymentStatus.PENDING
    assert rig.settle.calls == []
    # the refused deliveries did not use up the event id: the genuine one is processed
    genuine = await rig.post_callback(body, sign(SECRET, body, time.time()))
    assert (genuine.status_code, genuine.json()) == (200, {"status": "processed"})
    replayed = await rig.post_callback(body, sign(SECRET, body, time.time()))
    assert (replayed.status_code, replayed.json()) == (200, {"status": "duplicate"})
    assert await rig.status(order) is PaymentStatus.SUCCEEDED
    assert rig.settle.calls == [(order.id, order.user_id, order.drop_id, True, "")]


async def test_a_provider_that_never_calls_back_times_out_once(make_rig: MakeRig) -> None:
    rig = await make_rig(provider={"callback_loss_rate": 1.0}, timeout_seconds=0.5)
    order = an_order()

    await rig.service.request_payment(order)

    payment = await rig.wait_for(order, PaymentStatus.TIMED_OUT)
    await settled_quietly(rig)
    await asyncio.sleep(0.5)
    assert rig.settle.calls == [(order.id, order.user_id, order.drop_id, False, "provider_timeout")]
    assert payment.failure_reason == "provider_timeout"
    assert await rig.event_types() == ["payment.failed"]
    assert (await rig.events.read_after())[0].data["reason"] == "provider_timeout"


async def test_a_success_after_the_timeout_is_refunded(make_rig: MakeRig) -> None:
    rig = await make_rig(
        provider={"latency_median_ms": 600, "latency_p99_ms": 700}, timeout_seconds=0.2
    )
    order = an_order()

    await rig.service.request_payment(order)

    await rig.wait_for(order, PaymentStatus.TIMED_OUT)
    payment = await rig.wait_for(order, PaymentStatus.REFUNDED, within=5)
    assert rig.settle.calls == [(order.id, order.user_id, order.drop_id, False, "provider_timeout")]
    assert rig.provider is not None
    charge = rig.provider.charges[str(payment.provider_charge_id)]
    assert charge.status == "refunded"
    refunds = [request for request in rig.requests if request.path == "/v1/refunds"]
    assert len(refunds) == 1
    # the provider's charge.refunded confirmation changes nothing further
    await asyncio.sleep(0.5)
    assert await rig.status(order) is PaymentStatus.REFUNDED
    assert len(rig.settle.calls) == 1
    assert await rig.service.succeeded_payments(order.drop_id) == []


async def test_callbacks_racing_the_timeout_settle_each_order_once(make_rig: MakeRig) -> None:
    rig = await make_rig(
        provider={"latency_median_ms": 200, "latency_p99_ms": 320}, timeout_seconds=0.25
    )
    orders = [an_order(key=f"race-{index}") for index in range(20)]

    await asyncio.gather(*(rig.service.request_payment(order) for order in orders))

    for order in orders:
        await rig.wait_for(order, *FINAL)
    await asyncio.sleep(0.5)  # a request the timeout cut off mid-way may still make a charge
    assert rig.provider is not None
    charged = {charge.body.reference for charge in rig.provider.charges.values()}
    assert charged, "no charge request reached the provider: nothing raced"
    for order in orders:
        if order.id in charged:  # every charge succeeds at the provider: kept, or refunded
            await rig.wait_for(order, PaymentStatus.SUCCEEDED, PaymentStatus.REFUNDED)
        else:  # cut off by the timeout before the provider had it (a loaded machine)
            assert await rig.status(order) is PaymentStatus.TIMED_OUT
    await asyncio.sleep(0.3)
    reports = {call[0]: call for call in rig.settle.calls}
    assert len(rig.settle.calls) == len(reports) == len(orders)
    for order in orders:
        kept = await rig.status(order) is PaymentStatus.SUCCEEDED
        succeeded, reason = reports[order.id][3:]
        assert succeeded is kept
        assert reason == ("" if kept else "provider_timeout")


async def test_a_success_for_an_expired_order_is_refunded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    rig.settle.on_success = Settlement.REFUND
    order = an_order()

    await rig.service.request_payment(order)

    payment = await rig.wait_for(order, PaymentStatus.REFUNDED)
    assert rig.provider is not None
    assert rig.provider.charges[str(payment.provider_charge_id)].status == "refunded"
    assert [call[3] for call in rig.settle.calls] == [True]
    assert payment.failure_reason == "reservation_expired"
    assert await rig.event_types() == []  # no payment.succeeded for money that went back


async def test_a_provider_that_is_down_is_retried_then_the_order_fails_once(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(
        provider_url=f"http://127.0.0.1:{free_port()}", max_attempts=3, backoff_seconds=0.01
    )
    order = an_order()

    await rig.service.request_payment(order)

    payment = await rig.wait_for(order, PaymentStatus.FAILED)
    await settled_quietly(rig)
    assert len(rig.requests) == 3
    assert {request.headers["Idempotency-Key"] for request in rig.requests} == {"usr_1:key-1"}
    assert rig.settle.calls == [
        (order.id, order.user_id, order.drop_id, False, "provider_unreachable")
    ]
    assert payment.failure_reason == "provider_unreachable"
    assert await rig.event_types() == ["payment.failed"]


async def test_a_refused_charge_request_fails_at_once_without_retries(make_rig: MakeRig) -> None:
    rig = await make_rig()
    assert rig.provider is not None
    rig.service._provider_url += "/no-such-api"
    order = an_order()

    await rig.service.request_payment(order)

    await rig.wait_for(order, PaymentStatus.FAILED)
    assert len(rig.requests) == 1
    assert rig.settle.calls == [
        (order.id, order.user_id, order.drop_id, False, "provider_rejected_404")
    ]


async def test_events_of_unknown_types_or_payments_are_acknowledged_and_ignored(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(provider=None, provider_url="http://127.0.0.1:9")
    stranger = an_order(user_id="usr_unknown")
    unknown_type = event_for(stranger, "ch_1", kind="charge.dispute.created", event_id="evt_a")
    unknown_payment = event_for(stranger, "ch_1", event_id="evt_b")

    for body in (unknown_type, unknown_payment):
        answer = await rig.post_callback(body, sign(SECRET, body, time.time()))
        assert (answer.status_code, answer.json()) == (200, {"status": "ignored"})
    garbage = b'{"id": 1}'
    answer = await rig.post_callback(garbage, sign(SECRET, garbage, time.time()))
    assert (answer.status_code, answer.json()["code"]) == (400, "malformed_event")
    assert rig.settle.calls == []


async def test_close_cancels_the_work_in_flight(make_rig: MakeRig) -> None:
    rig = await make_rig(provider={"callback_loss_rate": 1.0}, timeout_seconds=30)
    order = an_order()
    await rig.service.request_payment(order)
    await rig.wait_for(order, PaymentStatus.PENDING)

    await rig.service.close()
    await rig.service.request_payment(an_order(key="after-close"))

    assert rig.service._tasks == set()
    assert await rig.status(an_order(key="after-close")) is None
    assert rig.settle.calls == []


def an_abandoned_payment(order: Order, status: PaymentStatus, age_seconds: float) -> Payment:
    """A payment as a process that died would have left it, `age_seconds` old."""
    then = datetime.now(UTC) - timedelta(seconds=age_seconds)
    return Payment(
        id=f"pay_{order.id}",
        order_id=order.id,
        user_id=order.user_id,
        drop_id=order.drop_id,
        amount_cents=order.amount_cents,
        idempotency_key=f"{order.user_id}:{order.idempotency_key}",
        status=status,
        created_at=then,
        updated_at=then,
    )


async def test_recovery_times_out_payments_a_dead_process_left_open(make_rig: MakeRig) -> None:
    rig = await make_rig(provider={"callback_loss_rate": 1.0}, timeout_seconds=1.0)
    abandoned = [an_order(key="left-requested"), an_order(key="left-pending")]
    recent = an_order(key="recent")
    for order, status in zip(abandoned, sorted(OPEN), strict=True):
        assert await rig.store.insert(an_abandoned_payment(order, status, age_seconds=600))
    assert await rig.store.insert(an_abandoned_payment(recent, PaymentStatus.REQUESTED, 0.1))

    first = await rig.service.recover()
    again = await rig.service.recover()

    assert (first.timed_out, again.timed_out) == (2, 0)
    for order in abandoned:
        assert await rig.status(order) is PaymentStatus.TIMED_OUT
    assert await rig.status(recent) is PaymentStatus.REQUESTED  # its pursuer may be alive
    assert sorted(rig.settle.calls) == sorted(
        (order.id, order.user_id, order.drop_id, False, "provider_timeout") for order in abandoned
    )
    assert await rig.event_types() == ["payment.failed", "payment.failed"]


async def test_one_payment_recovery_cannot_conclude_does_not_hold_up_the_rest(
    make_rig: MakeRig,
) -> None:
    rig = await make_rig(timeout_seconds=1.0)
    stuck, fine = an_order(key="stuck"), an_order(key="fine")
    for order in (stuck, fine):
        assert await rig.store.insert(
            an_abandoned_payment(order, PaymentStatus.REQUESTED, age_seconds=600)
        )
    rig.settle.unreachable_for.add(stuck.id)

    recovery = await rig.service.recover()

    assert (recovery.timed_out, recovery.failed) == (1, 1)
    assert [call[0] for call in rig.settle.calls] == [fine.id]
    assert await rig.status(fine) is PaymentStatus.TIMED_OUT


async def test_recovery_leaves_alone_what_this_process_still_pursues(make_rig: MakeRig) -> None:
    skew = [0.0]  # this process's clock runs ahead by this much (as another process's might)
    rig = await make_rig(
        provider={"callback_loss_rate": 1.0},
        timeout_seconds=0.5,
        clock=lambda: time.time() + skew[0],
    )
    order = an_order()
    await rig.service.request_payment(order)
    await rig.wait_for(order, PaymentStatus.PENDING)
    skew[0] = 600.0  # the payment now looks long abandoned, but its pursuer is right here

    assert (await rig.service.recover()).timed_out == 0

    await rig.wait_for(order, PaymentStatus.TIMED_OUT)  # by its own pursuer, once
    await settled_quietly(rig)
    assert len(rig.settle.calls) == 1


async def test_recovery_finishes_a_refund_a_crash_cut_short(make_rig: MakeRig) -> None:
    rig = await make_rig()
    order = an_order()
    await rig.service.request_payment(order)
    payment = await rig.wait_for(order, PaymentStatus.SUCCEEDED)
    await settled_quietly(rig)
    # the process died after the success and before it could confirm; when the order service
    # hears of it again, the hold has lapsed and it answers REFUND
    rig.settle.on_success = Settlement.REFUND

    assert (await rig.service.recover()).resettled == 0  # not asked to look at successes
    recovery = await rig.service.recover(resettle_seconds=60)

    assert recovery.resettled == 1
    refunded = await rig.wait_for(order, PaymentStatus.REFUNDED)
    assert refunded.failure_reason == "reservation_expired"
    assert rig.provider is not None
    assert rig.provider.charges[str(payment.provider_charge_id)].status == "refunded"
    assert (await rig.service.recover(resettle_seconds=60)).resettled == 0  # done with it


async def test_callback_ids_are_forgotten_only_past_the_retention(store: PaymentStore) -> None:
    now = time.time()
    for n in range(6):
        assert await store.claim_callback(f"evt_old{n}", now - 8 * 86_400)
    assert await store.claim_callback("evt_recent", now - 60)
    assert await store.prune_callbacks(now - 7 * 86_400) == 6
    # a pruned id is new again; a recent one is still refused as a replay
    assert await store.claim_callback("evt_old0", now)
    assert not await store.claim_callback("evt_recent", now)


async def test_concurrent_payment_inserts_share_a_commit_and_an_order_is_paid_once(
    store: PaymentStore,
) -> None:
    orders = [an_order(key=f"batch{n}") for n in range(20)]
    twice = orders[7]
    second = msgspec.structs.replace(
        an_abandoned_payment(twice, PaymentStatus.REQUESTED, 0), id="pay_second"
    )
    inserted = await asyncio.gather(
        *(
            store.insert(an_abandoned_payment(order, PaymentStatus.REQUESTED, 0))
            for order in orders
        ),
        store.insert(second),
    )
    # the second payment of one order is refused; its neighbours in the batch are all recorded
    assert inserted == [True] * 20 + [False]
    for order in orders:
        found = await store.payment_of_order(order.user_id, order.id)
        assert found is not None
        assert found.id == f"pay_{order.id}"
