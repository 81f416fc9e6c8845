"""Notifications end to end over real HTTP: drop alerts, coalesced stock, order outcomes, resume
with Last-Event-ID, tickets, the connection cap, heartbeats and the inbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import pytest

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, follow, make_creator, make_drop, place_order, sign_up
from tests.rush import buyer_tokens, drop_starts
from tests.sse import open_stream, stream_ticket

STREAM_SETTINGS: dict[str, Any] = {
    "provider_latency_median_ms": 20,
    "provider_latency_p99_ms": 100,
    "provider_failure_rate": 0.0,
    "provider_duplicate_rate": 0.0,
    "provider_out_of_order_rate": 0.0,
    "stock_update_seconds": 0.25,
    "sse_heartbeat_seconds": 0.3,
    "sse_retry_ms": 2000,
}


@pytest.fixture(scope="module")
def server(shared_backend_settings: Settings) -> Iterator[ServerProcess]:
    with ServerProcess(shared_backend_settings.model_copy(update=STREAM_SETTINGS)) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


async def wait_live(drop: dict[str, Any]) -> None:
    delay = drop_starts(drop) - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def test_follower_connected_before_the_drop_gets_the_alert(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    creator_id, creator = await make_creator(client)
    _, fan = await sign_up(client)
    _, stranger = await sign_up(client)
    await follow(client, fan, creator_id)
    async with (
        open_stream(session, server.url, ticket=await stream_ticket(client, fan)) as fan_stream,
        open_stream(session, server.url, token=stranger) as stranger_stream,
    ):
        drop = await make_drop(client, creator, starts_in=1.0, stock=5)
        [alert] = await fan_stream.wait_for("drop.went_live")
        envelope = alert.envelope()
        assert envelope["id"] == alert.id
        assert envelope["type"] == "drop.went_live"
        assert envelope["data"]["drop_id"] == drop["id"]
        assert envelope["data"]["creator_id"] == creator_id
        assert envelope["at"] <= alert.received_at
        # the alert reached the fan only, and once
        await asyncio.sleep(0.5)
        assert len(fan_stream.events("drop.went_live")) == 1
        assert stranger_stream.events("drop.went_live") == []


async def test_watcher_gets_coalesced_stock_updates_and_sold_out(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, creator = await make_creator(client)
    stock, buyers = 40, 60
    _, watcher = await sign_up(client)
    tokens = list(
        (
            await buyer_tokens(client, server.settings, buyers, f"usr_w{uuid.uuid4().hex[:8]}_")
        ).values()
    )
    drop = await make_drop(client, creator, starts_in=1.0, stock=stock)
    async with open_stream(session, server.url, token=watcher, drops=[drop["id"]]) as stream:
        [live] = await stream.wait_for("drop.went_live")
        started = time.monotonic()

        async def buy(token: str) -> int:
            response = await client.post(
                f"/v1/drops/{drop['id']}/orders",
                headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
            )
            return response.status_code

        statuses = await asyncio.gather(*(buy(token) for token in tokens))
        assert statuses.count(201) == stock
        await stream.wait_for("drop.sold_out")
        await stream.wait_until(
            lambda s: any(f.envelope()["data"]["available"] == 0 for f in s.events("drop.stock"))
        )
        elapsed = time.monotonic() - started

    updates = [f for f in stream.events("drop.stock") if f.received_at >= live.received_at]
    levels = [f.envelope()["data"] for f in updates]
    assert all(level["drop_id"] == drop["id"] and level["stock"] == stock for level in levels)
    assert all(level["available"] + level["reserved"] + level["sold"] == stock for level in levels)
    # 60 orders moved stock 40 times; the watcher got a few frames per second, not one each
    assert len(updates) < stock
    assert len(updates) <= elapsed / STREAM_SETTINGS["stock_update_seconds"] + 2
    available = [level["available"] for level in levels]
    assert available == sorted(available, reverse=True)


async def test_buyer_gets_their_confirmation(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, creator = await make_creator(client)
    drop = await make_drop(client, creator, starts_in=0.5, stock=3)
    _, buyer = await sign_up(client)
    _, other = await sign_up(client)
    await wait_live(drop)
    async with (
        open_stream(session, server.url, token=buyer) as mine,
        open_stream(session, server.url, token=other) as theirs,
    ):
        placed = await place_order(client, buyer, drop["id"])
        [confirmed] = await mine.wait_for("order.confirmed")
        assert confirmed.envelope()["data"]["order_id"] == placed["id"]
        await asyncio.sleep(0.3)
        assert theirs.events("order.confirmed") == []


async def test_reconnect_with_last_event_id_gets_exactly_what_it_missed(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, fan = await sign_up(client)
    creators = [await make_creator(client) for _ in range(3)]
    for creator_id, _ in creators:
        await follow(client, fan, creator_id)
    (_, first), (_, second), (_, third) = creators

    async with open_stream(session, server.url, token=fan) as before:
        drop_a = await make_drop(client, first, starts_in=0.5)
        [seen] = await before.wait_for("drop.went_live")
        assert seen.envelope()["data"]["drop_id"] == drop_a["id"]

    # offline: two drops go live, and unrelated events happen around them
    drop_b = await make_drop(client, second, starts_in=0.3)
    _, unrelated = await make_creator(client)
    await make_drop(client, unrelated, starts_in=0.3)
    drop_c = await make_drop(client, third, starts_in=0.6)
    await wait_live(drop_c)
    await asyncio.sleep(0.6)  # the clock has moved both drops

    async with open_stream(session, server.url, token=fan, last_event_id=seen.id) as after:
        missed = await after.wait_for("drop.went_live", count=2)
        assert [f.envelope()["data"]["drop_id"] for f in missed] == [drop_b["id"], drop_c["id"]]
        # then live delivery goes on, with nothing repeated
        drop_d = await make_drop(client, first, starts_in=0.3)
        alerts = await after.wait_for("drop.went_live", count=3)
        assert alerts[2].envelope()["data"]["drop_id"] == drop_d["id"]
        await asyncio.sleep(0.5)
        ids = [f.id for f in after.events("drop.went_live")]
        assert len(ids) == 3 == len(set(ids))
        assert seen.id not in ids


async def test_resuming_beyond_the_retention_window_is_told_so(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, token = await sign_up(client)
    async with open_stream(session, server.url, token=token, last_event_id="1-0") as stream:
        [reset] = await stream.wait_for("stream.reset")
        assert reset.id is None  # it must not move the client's Last-Event-ID
        assert reset.envelope()["last_event_id"] == "1-0"


async def test_stream_frames_carry_retry_and_heartbeats(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, token = await sign_up(client)
    async with open_stream(session, server.url, token=token) as stream:
        await stream.wait_until(lambda s: any("heartbeat" in f.comments for f in s.frames))
    retries = [f.retry for f in stream.frames if f.retry is not None]
    assert len(retries) == 1
    assert 1500 <= retries[0] <= 2500  # 2,000 ms +- 25 % jitter


async def test_tickets_work_once_and_bad_credentials_get_problems(
    server: ServerProcess, client: httpx.AsyncClient, session: aiohttp.ClientSession
) -> None:
    _, token = await sign_up(client)
    once = await stream_ticket(client, token)
    async with open_stream(session, server.url, ticket=once):
        pass
    refused = [
        await client.get("/v1/stream", params={"ticket": once}),
        await client.get("/v1/stream", params={"ticket": "made-up"}),
        await client.get("/v1/stream"),
        await client.get("/v1/stream", headers=bearer("not-a-jwt")),
    ]
    for response in refused:
        assert response.status_code == 401, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
    assert refused[0].json()["code"] == "invalid_ticket"
    assert (await client.post("/v1/stream/tickets")).status_code == 401

    bad_id = await client.get("/v1/stream", headers={**bearer(token), "Last-Event-ID": "nope"})
    assert bad_id.status_code == 400
    assert bad_id.json()["code"] == "invalid_event_id"
    bad_drop = await client.get("/v1/stream", headers=bearer(token), params={"drops": "a b"})
    assert bad_drop.status_code == 400


async def test_inbox_holds_alerts_for_followers_who_were_offline(
    server: ServerProcess, client: httpx.AsyncClient
) -> None:
    creator_id, creator = await make_creator(client)
    _, fan = await sign_up(client)
    _, stranger = await sign_up(client)
    await follow(client, fan, creator_id)
    scheduled = await make_drop(client, creator, starts_in=3600)
    drop = await make_drop(client, creator, starts_in=0.3)
    await wait_live(drop)

    async def inbox(token: str) -> list[dict[str, Any]]:
        for _ in range(50):
            response = await client.get("/v1/me/notifications", headers=bearer(token))
            assert response.status_code == 200, response.text
            items: list[dict[str, Any]] = response.json()["items"]
            if items or token == stranger:
                return items
            await asyncio.sleep(0.1)
        return []

    items = await inbox(fan)
    assert [item["data"]["drop_id"] for item in items] == [drop["id"]]
    assert items[0]["type"] == "drop.went_live"
    assert scheduled["id"] not in {item["data"]["drop_id"] for item in items}
    assert await inbox(stranger) == []


async def test_a_full_server_answers_503_with_retry_after(settings: Settings) -> None:
    capped = settings.model_copy(update={"sse_max_connections": 2})
    with ServerProcess(capped) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            aiohttp.ClientSession() as session,
        ):
            _, token = await sign_up(client)
            async with (
                open_stream(session, server.url, token=token),
                open_stream(session, server.url, token=token),
            ):
                full = await client.get("/v1/stream", headers=bearer(token))
                assert full.status_code == 503
                assert full.json()["code"] == "streams_full"
                assert 1 <= int(full.headers["retry-after"]) <= 5
            # closed streams free their places
            await asyncio.sleep(0.3)
            async with open_stream(session, server.url, token=token):
                pass
