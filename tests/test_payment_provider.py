"""The simulated payment provider, over real loopback HTTP: idempotent charges, signed callbacks
retried like webhooks, and the faults a scenario dials in (declines, duplicates, stale and lost
callbacks, lost responses)."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import msgspec
import pytest
from litestar import Litestar, Request, Response, post
from litestar.datastructures import State

from dropsim.payments.provider import (
    DECLINE_REASONS,
    EmbeddedProvider,
    LoopbackServer,
    ProviderConfig,
    ProviderEvent,
    SimulatedProvider,
)
from dropsim.payments.signing import SIGNATURE_HEADER, verify

SECRET = "provider-test-secret"
FAST = ProviderConfig(
    signing_secret=SECRET,
    latency_median_ms=5,
    latency_p99_ms=20,
    failure_rate=0.0,
    duplicate_rate=0.0,
    out_of_order_rate=0.0,
    callback_loss_rate=0.0,
    seed=7,
    callback_backoff_seconds=0.01,
)


@dataclass
class Receiver:
    """A webhook endpoint that records every delivery (and can fail the first few)."""

    url: str = ""
    deliveries: list[tuple[bytes, str | None]] = field(default_factory=list)
    fail_first: int = 0

    def events(self) -> list[ProviderEvent]:
        return [msgspec.json.decode(body, type=ProviderEvent) for body, _ in self.deliveries]


def receiver_app(receiver: Receiver) -> Litestar:
    @post("/hook", status_code=200)
    async def hook(request: Request[Any, Any, State]) -> Response[str]:
        receiver.deliveries.append((await request.body(), request.headers.get(SIGNATURE_HEADER)))
        if receiver.fail_first > 0:
            receiver.fail_first -= 1
            return Response("try again", status_code=500)
        return Response("ok")

    return Litestar(route_handlers=[hook], openapi_config=None)


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    async with LoopbackServer(receiver_app(hooks)) as server:
        hooks.url = f"{server.url}/hook"
        yield hooks


Start = Callable[..., Awaitable[tuple[EmbeddedProvider, httpx.AsyncClient]]]


@pytest.fixture
async def start_provider() -> AsyncIterator[Start]:
    """Start a provider with FAST settings changed by keyword; stopped after the test."""
    started: list[tuple[EmbeddedProvider, httpx.AsyncClient]] = []

    async def start(**changes: Any) -> tuple[EmbeddedProvider, httpx.AsyncClient]:
        server = EmbeddedProvider(replace(FAST, **changes))
        await server.start()
        client = httpx.AsyncClient(base_url=server.url)
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        await client.aclose()
        await server.stop()


def charge_body(receiver: Receiver, reference: str = "ord_1", amount: int = 1500) -> dict[str, Any]:
    return {
        "amount_cents": amount,
        "currency": "usd",
        "reference": reference,
        "metadata": {"order_id": reference, "user_id": "usr_1", "drop_id": "drp_1"},
        "callback_url": receiver.url,
    }


async def test_a_charge_is_made_once_per_idempotency_key(
    start_provider: Start, receiver: Receiver
) -> None:
    server, client = await start_provider(callback_loss_rate=1.0)
    body = charge_body(receiver)

    first = await client.post("/v1/charges", json=body, headers={"Idempotency-Key": "k1"})
    again = await client.post("/v1/charges", json=body, headers={"Idempotency-Key": "k1"})
    other = await client.post("/v1/charges", json=body, headers={"Idempotency-Key": "k2"})

    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json()["id"].startswith("ch_")
    assert first.json()["status"] == "pending"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.json()["id"] != first.json()["id"]
    assert len(server.provider.charges) == 2
    assert server.provider.charges[first.json()["id"]].idempotency_key == "k1"


async def test_a_key_reused_for_another_charge_or_no_key_is_refused(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider(callback_loss_rate=1.0)
    await client.post("/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "k"})

    reused = await client.post(
        "/v1/charges", json=charge_body(receiver, amount=1), headers={"Idempotency-Key": "k"}
    )
    keyless = await client.post("/v1/charges", json=charge_body(receiver))

    assert reused.status_code == 422
    assert reused.json()["code"] == "idempotency_key_reused"
    assert keyless.status_code == 400
    assert keyless.json()["code"] == "idempotency_key_missing"


async def test_callbacks_are_signed_with_the_shared_secret(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider()
    charge = (
        await client.post(
            "/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"}
        )
    ).json()

    await eventually(lambda: len(receiver.deliveries) == 1)
    body, header = receiver.deliveries[0]
    verify(SECRET, body, header, now=__import__("time").time())
    event = receiver.events()[0]
    assert event.id.startswith("evt_")
    assert event.type == "charge.succeeded"
    assert event.data.charge_id == charge["id"]
    assert event.data.reference == "ord_1"
    assert event.data.amount_cents == 1500
    assert event.data.metadata == {"order_id": "ord_1", "user_id": "usr_1", "drop_id": "drp_1"}
    assert event.data.failure_reason is None
    assert b"failure_reason" not in body
    shown = (await client.get(f"/v1/charges/{charge['id']}")).json()
    assert shown["status"] == "succeeded"


async def test_failure_rate_one_declines_every_charge(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider(failure_rate=1.0)
    charge = (
        await client.post(
            "/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"}
        )
    ).json()

    await eventually(lambda: len(receiver.deliveries) == 1)
    event = receiver.events()[0]
    assert event.type == "charge.failed"
    assert event.data.failure_reason in DECLINE_REASONS
    shown = (await client.get(f"/v1/charges/{charge['id']}")).json()
    assert shown["status"] == "failed"
    assert shown["failure_reason"] == event.data.failure_reason


async def test_duplicate_rate_one_delivers_each_event_twice(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider(duplicate_rate=1.0)
    await client.post("/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"})

    await eventually(lambda: len(receiver.deliveries) == 2)
    await asyncio.sleep(0.1)
    events = receiver.events()
    assert len(events) == 2
    assert events[0].id == events[1].id
    assert events[0].type == events[1].type == "charge.succeeded"


async def test_callback_loss_rate_one_never_calls_back(
    start_provider: Start, receiver: Receiver
) -> None:
    server, client = await start_provider(callback_loss_rate=1.0)
    charge = (
        await client.post(
            "/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"}
        )
    ).json()

    await eventually(lambda: server.provider.charges[charge["id"]].status != "pending")
    await asyncio.sleep(0.2)
    assert receiver.deliveries == []
    assert server.provider.deliveries == 0


async def test_out_of_order_rate_one_sends_a_stale_pending_after_the_outcome(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider(out_of_order_rate=1.0)
    await client.post("/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"})

    await eventually(lambda: len(receiver.deliveries) == 2)
    final, stale = receiver.events()
    assert (final.type, stale.type) == ("charge.succeeded", "charge.pending")
    assert stale.id != final.id
    assert stale.created <= final.created


async def test_a_callback_answered_with_an_error_is_retried(
    start_provider: Start, receiver: Receiver
) -> None:
    server, client = await start_provider()
    receiver.fail_first = 2
    await client.post("/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"})

    await eventually(lambda: len(receiver.deliveries) == 3)
    ids = {event.id for event in receiver.events()}
    assert len(ids) == 1
    for body, header in receiver.deliveries:  # every attempt carries a valid signature
        verify(SECRET, body, header, now=__import__("time").time())
    assert server.provider.deliveries == 3


async def test_a_lost_response_is_recovered_by_retrying_with_the_same_key(
    start_provider: Start, receiver: Receiver
) -> None:
    server, client = await start_provider(lost_response_rate=1.0, callback_loss_rate=1.0)
    headers = {"Idempotency-Key": "a"}

    lost = await client.post("/v1/charges", json=charge_body(receiver), headers=headers)
    retried = await client.post("/v1/charges", json=charge_body(receiver), headers=headers)

    assert lost.status_code == 503
    assert retried.status_code == 202
    assert list(server.provider.charges) == [retried.json()["id"]]


async def test_a_succeeded_charge_can_be_refunded_once(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider()
    charge = (
        await client.post(
            "/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"}
        )
    ).json()
    await eventually(lambda: len(receiver.deliveries) == 1)

    refund = await client.post("/v1/refunds", json={"charge_id": charge["id"]})
    again = await client.post("/v1/refunds", json={"charge_id": charge["id"]})

    assert refund.status_code == again.status_code == 200
    assert refund.json()["id"].startswith("re_")
    assert again.json() == refund.json()
    await eventually(lambda: len(receiver.deliveries) == 2)
    refunded = receiver.events()[1]
    assert refunded.type == "charge.refunded"
    assert refunded.data.charge_id == charge["id"]
    shown = (await client.get(f"/v1/charges/{charge['id']}")).json()
    assert shown["status"] == "refunded"
    assert shown["refund_id"] == refund.json()["id"]


async def test_only_a_succeeded_charge_can_be_refunded(
    start_provider: Start, receiver: Receiver
) -> None:
    _, client = await start_provider(failure_rate=1.0)
    charge = (
        await client.post(
            "/v1/charges", json=charge_body(receiver), headers={"Idempotency-Key": "a"}
        )
    ).json()
    await eventually(lambda: len(receiver.deliveries) == 1)

    declined = await client.post("/v1/refunds", json={"charge_id": charge["id"]})
    unknown = await client.post("/v1/refunds", json={"charge_id": "ch_nope"})
    missing = await client.get("/v1/charges/ch_nope")

    assert declined.status_code == 409
    assert declined.json()["code"] == "charge_not_refundable"
    assert unknown.status_code == missing.status_code == 404


def test_latency_is_lognormal_through_the_median_and_p99() -> None:
    provider = SimulatedProvider(replace(FAST, latency_median_ms=100, latency_p99_ms=1000))

    samples = sorted(provider.sample_latency() for _ in range(40_000))

    assert statistics.median(samples) == pytest.approx(0.100, rel=0.05)
    assert samples[int(len(samples) * 0.99)] == pytest.approx(1.0, rel=0.12)


def test_the_seed_replays_the_same_faults() -> None:
    config = replace(FAST, failure_rate=0.5, duplicate_rate=0.5, seed=42)
    first, second = SimulatedProvider(config), SimulatedProvider(config)

    assert [first._draw_plan() for _ in range(50)] == [second._draw_plan() for _ in range(50)]


@pytest.mark.parametrize(
    "changes",
    [
        {"failure_rate": 1.5},
        {"callback_loss_rate": -0.1},
        {"latency_median_ms": 0},
        {"latency_median_ms": 500, "latency_p99_ms": 100},
        {"callback_attempts": 0},
    ],
)
def test_nonsense_configuration_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        replace(FAST, **changes)
