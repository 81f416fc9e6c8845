"""/metrics over HTTP: the business counters match what the buyers saw and what SQL holds, the
live-drop gauges follow the inventory (and drop a drop that is no longer live), and request
latency is a histogram labelled by route template."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_creator, make_drop
from tests.rush import (
    buyer_tokens,
    drop_starts,
    fast_provider,
    orders_of,
    rush_client,
    settled_audit,
)
from tests.scrape import scrape, total, value


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "the metrics never caught up"
        await asyncio.sleep(0.2)


class Buyer:
    """Places orders for one user and remembers what the server answered."""

    def __init__(self, client: httpx.AsyncClient, token: str, seen: Counter[str]) -> None:
        self._client = client
        self._token = token
        self._seen = seen

    async def order(self, drop_id: str, key: str | None = None) -> str:
        """Order one unit with `key` (a fresh one if None); return the outcome seen."""
        response = await self._client.post(
            f"/v1/drops/{drop_id}/orders",
            json={"quantity": 1},
            headers={**bearer(self._token), "Idempotency-Key": key or str(uuid.uuid4())},
        )
        if response.headers.get("Idempotency-Replayed") == "true":
            outcome = "replayed"
        elif response.status_code == 201:
            outcome = "reserved"
        else:
            assert response.status_code == 409, response.text
            outcome = f"refused_{response.json()['code']}"
        self._seen[outcome] += 1
        return outcome


async def live(client: httpx.AsyncClient, drop: dict[str, Any]) -> None:
    await asyncio.sleep(max(0.0, drop_starts(drop) - time.time()) + 0.05)
    for _ in range(100):
        if (await client.get(f"/v1/drops/{drop['id']}")).json()["status"] in ("live", "sold_out"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the drop never went live")


async def statuses_of(client: httpx.AsyncClient, tokens: list[str]) -> Counter[str]:
    """How many of these buyers' orders SQL holds in each status."""
    statuses: Counter[str] = Counter()
    for token in tokens:
        statuses.update(order["status"] for order in await orders_of(client, token))
    return statuses


async def test_counters_and_gauges_after_orders(backend_settings: Settings) -> None:
    with ServerProcess(fast_provider(backend_settings)) as server:
        async with rush_client(server.url) as client:
            tokens = list((await buyer_tokens(client, server.settings, 6)).values())
            seen: Counter[str] = Counter()
            b0, b1, b2, b3, b4, b5 = (Buyer(client, token, seen) for token in tokens)
            _, creator = await make_creator(client)
            scarce = await make_drop(client, creator, starts_in=1.0, stock=4)
            plenty = await make_drop(client, creator, starts_in=1.0, stock=10)

            assert await b0.order(scarce["id"]) == "refused_drop_not_live"
            await live(client, scarce)
            await live(client, plenty)
            key = str(uuid.uuid4())
            assert await b0.order(scarce["id"], key) == "reserved"
            assert await b0.order(scarce["id"], key) == "replayed"
            second = str(uuid.uuid4())
            assert await b0.order(scarce["id"], second) == "refused_limit_reached"
            assert await b0.order(scarce["id"], second) == "replayed"
            for buyer in (b1, b2, b3):
                assert await buyer.order(scarce["id"]) == "reserved"
            assert await b4.order(scarce["id"]) == "refused_sold_out"
            assert await b5.order(plenty["id"]) == "reserved"
            scarce_audit = await settled_audit(client, server.settings, scarce["id"])
            plenty_audit = await settled_audit(client, server.settings, plenty["id"])
            statuses = await statuses_of(client, tokens)

            async def gauges_match() -> bool:
                samples = await scrape(client)
                return all(
                    value(samples, "dropsim_stock_available", drop_id=audit["drop_id"])
                    == audit["available"]
                    and value(samples, "dropsim_reservations_live", drop_id=audit["drop_id"])
                    == audit["reserved"]
                    for audit in (scarce_audit, plenty_audit)
                )

            await eventually(gauges_match)
            samples = await scrape(client)

            cancelled = await client.post(
                f"/v1/drops/{plenty['id']}/cancel", headers=bearer(creator)
            )
            assert cancelled.status_code == 200, cancelled.text

            async def cancelled_drop_gone() -> bool:
                after = await scrape(client)
                return (
                    value(after, "dropsim_stock_available", drop_id=plenty["id"]) is None
                    and value(after, "dropsim_reservations_live", drop_id=plenty["id"]) is None
                    and value(after, "dropsim_stock_available", drop_id=scarce["id"]) == 0
                )

            await eventually(cancelled_drop_gone)

    assert seen == {
        "reserved": 5,
        "replayed": 2,
        "refused_drop_not_live": 1,
        "refused_limit_reached": 1,
        "refused_sold_out": 1,
    }
    assert statuses == {"confirmed": 5}
    assert scarce_audit["sold"] + plenty_audit["sold"] == 5
    orders = "dropsim_orders_total"
    for outcome in ("reserved", "refused_drop_not_live", "refused_limit_reached"):
        assert value(samples, orders, outcome=outcome) == seen[outcome], outcome
    assert value(samples, orders, outcome="refused_sold_out") == seen["refused_sold_out"]
    assert value(samples, orders, outcome="confirmed") == statuses["confirmed"]
    assert value(samples, orders, outcome="failed") == 0
    assert value(samples, orders, outcome="expired") == 0
    assert value(samples, "dropsim_idempotent_replays_total") == seen["replayed"]
    published = "dropsim_events_published_total"
    assert value(samples, published, type="order.reserved") == 5
    assert value(samples, published, type="order.confirmed") == 5
    assert value(samples, published, type="drop.went_live") == 2
    assert value(samples, published, type="drop.sold_out") == 1
    # request latency: a histogram per route template, not per drop id
    route = "/v1/drops/{drop_id}/orders"
    order_requests = sum(seen.values())
    assert total(samples, "dropsim_request_duration_seconds_count", path=route) == order_requests
    assert (
        total(samples, "dropsim_request_duration_seconds_bucket", path=route, le="+Inf")
        == order_requests
    )
    assert not any(scarce["id"] in dict(labels).get("path", "") for _, labels in samples)


BUYERS = 40


async def test_failed_and_expired_orders_are_counted_as_sql_has_them(
    backend_settings: Settings,
) -> None:
    """Declined payments fail their orders; lost callbacks let holds lapse (the reaper expires
    them). Each counter equals the orders SQL ends up with in that status."""
    settings = fast_provider(
        backend_settings,
        provider_failure_rate=0.4,
        provider_callback_loss_rate=0.3,
        reservation_hold_seconds=1.0,
    )
    with ServerProcess(settings) as server:
        async with rush_client(server.url) as client:
            tokens = list((await buyer_tokens(client, server.settings, BUYERS)).values())
            seen: Counter[str] = Counter()
            _, creator = await make_creator(client)
            drop = await make_drop(client, creator, starts_in=1.0, stock=100)
            await live(client, drop)
            await asyncio.gather(*(Buyer(client, t, seen).order(drop["id"]) for t in tokens))
            await settled_audit(client, server.settings, drop["id"])
            statuses = await statuses_of(client, tokens)
            samples = await scrape(client)

    assert seen == {"reserved": BUYERS}
    # with 40 buyers each outcome occurs (all but certainly), so no check below is 0 == 0
    assert set(statuses) == {"confirmed", "failed", "expired"}, statuses
    assert sum(statuses.values()) == BUYERS
    for status in ("confirmed", "failed", "expired"):
        counted = value(samples, "dropsim_orders_total", outcome=status)
        assert counted == statuses[status], (status, counted, statuses)
    assert value(samples, "dropsim_orders_total", outcome="reserved") == BUYERS
