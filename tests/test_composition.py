"""The drop page (API composition): one call, every part consistent with the services that own
it, the viewer's state when signed in, and a partial page (not a 500) when a part fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from dropsim.app import Services, create_app
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_creator, make_drop, place_order, sign_up
from tests.rush import buyer_tokens, fast_provider, open_drop, rush_client, settled_audit


@pytest.fixture
async def app(backend_settings: Settings) -> Litestar:
    return create_app(fast_provider(backend_settings))


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(app) as test_client:
        yield test_client


async def page_of(client: Any, drop_id: str, token: str | None = None) -> dict[str, Any]:
    response = await client.get(f"/v1/drops/{drop_id}/page", headers=bearer(token) if token else {})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_page_agrees_with_each_service(backend_settings: Settings) -> None:
    with ServerProcess(fast_provider(backend_settings)) as server:
        async with rush_client(server.url) as client:
            await _page_agrees_with_each_service(client, server.settings)


async def _page_agrees_with_each_service(client: httpx.AsyncClient, settings: Settings) -> None:
    creator_id, creator_token = await make_creator(client)
    drop = await make_drop(client, creator_token, starts_in=0.5, stock=5, per_user_limit=2)
    buyer_id, buyer = await sign_up(client)
    _, other_buyer = await sign_up(client)

    before = await page_of(client, drop["id"], buyer)
    assert before["errors"] == []
    assert before["drop"] == (await client.get(f"/v1/drops/{drop['id']}")).json()
    product = (await client.get(f"/v1/products/{drop['product_id']}")).json()
    assert before["product"] == product
    assert before["creator"] == (await client.get(f"/v1/creators/{creator_id}")).json()
    assert before["stock"] == {"stock": 5, "available": 5, "reserved": 0, "sold": 0}
    assert before["viewer"] == {"user_id": buyer_id, "follows_creator": False, "orders": []}

    followed = await client.put(f"/v1/me/following/{creator_id}", headers=bearer(buyer))
    assert followed.status_code == 200, followed.text
    assert (await page_of(client, drop["id"], buyer))["viewer"]["follows_creator"] is True

    await _until_live(client, drop["id"])
    mine = [await place_order(client, buyer, drop["id"]) for _ in range(2)]
    await place_order(client, other_buyer, drop["id"])
    audit = await settled_audit(client, settings, drop["id"])

    after = await page_of(client, drop["id"], buyer)
    assert after["stock"] == {
        name: audit[name] for name in ("stock", "available", "reserved", "sold")
    }
    assert after["stock"]["sold"] == 3
    listed = after["viewer"]["orders"]
    assert [found["id"] for found in listed] == sorted(placed["id"] for placed in mine)
    for found in listed:
        own = await client.get(f"/v1/orders/{found['id']}", headers=bearer(buyer))
        assert found["status"] == own.json()["status"] == "confirmed"
    others = await page_of(client, drop["id"], other_buyer)
    assert len(others["viewer"]["orders"]) == 1
    assert others["viewer"]["follows_creator"] is False

    unfollowed = await client.delete(f"/v1/me/following/{creator_id}", headers=bearer(buyer))
    assert unfollowed.status_code == 200, unfollowed.text
    assert (await page_of(client, drop["id"], buyer))["viewer"]["follows_creator"] is False


async def test_anonymous_viewer_gets_the_public_parts(client: AsyncTestClient[Any]) -> None:
    _, creator_token = await make_creator(client)
    drop = await make_drop(client, creator_token, stock=7)

    page = await page_of(client, drop["id"])

    assert page["viewer"] is None
    assert page["errors"] == []
    assert page["drop"]["id"] == drop["id"]
    assert page["product"]["id"] == drop["product_id"]
    assert page["creator"]["id"] == drop["creator_id"]
    assert page["stock"]["available"] == 7


@pytest.mark.parametrize(
    "header",
    ["Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer "],
    ids=["garbage", "basic", "empty"],
)
async def test_a_bad_token_is_refused_not_treated_as_anonymous(
    client: AsyncTestClient[Any], header: str
) -> None:
    _, creator_token = await make_creator(client)
    drop = await make_drop(client, creator_token)

    response = await client.get(f"/v1/drops/{drop['id']}/page", headers={"Authorization": header})

    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "invalid_token"


async def test_unknown_drop_is_a_404_problem(client: AsyncTestClient[Any]) -> None:
    _, buyer = await sign_up(client)
    for headers in ({}, bearer(buyer)):
        response = await client.get("/v1/drops/drp_nope/page", headers=headers)
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "drop_not_found"


async def test_a_failing_part_gives_a_partial_page(
    client: AsyncTestClient[Any], app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    creator_id, creator_token = await make_creator(client)
    drop = await make_drop(client, creator_token, stock=3)
    buyer_id, buyer = await sign_up(client)
    services: Services = app.state.services

    async def broken_stock(drop_id: str) -> None:
        raise ConnectionError("redis://secret-host:6379 refused")

    async def hanging_follow_state(user_id: str, creator_id: str) -> bool:
        await asyncio.sleep(30)
        return True

    monkeypatch.setattr(services.orders, "live_stock", broken_stock)
    monkeypatch.setattr(services.follows, "is_following", hanging_follow_state)
    monkeypatch.setattr(services.drop_pages, "part_timeout", 0.3)

    response = await client.get(f"/v1/drops/{drop['id']}/page", headers=bearer(buyer))

    assert response.status_code == 200, response.text
    page = response.json()
    assert page["errors"] == [
        {"part": "follow", "detail": "unavailable (no answer within 0.3 s)"},
        {"part": "stock", "detail": "unavailable (ConnectionError)"},
    ]
    assert "secret-host" not in response.text  # a backend's message is logged, not shown
    assert page["stock"] is None
    assert page["viewer"] == {"user_id": buyer_id, "follows_creator": None, "orders": []}
    assert page["drop"]["id"] == drop["id"]
    assert page["creator"]["id"] == creator_id
    assert page["product"]["id"] == drop["product_id"]


async def test_a_drop_that_cannot_be_read_is_a_503_problem(
    client: AsyncTestClient[Any], app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, creator_token = await make_creator(client)
    drop = await make_drop(client, creator_token)
    services: Services = app.state.services

    async def broken_drop(drop_id: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(services.creators, "drop", broken_drop)
    response = await client.get(f"/v1/drops/{drop['id']}/page")

    assert response.status_code == 503, response.text
    assert response.json()["code"] == "drop_unavailable"


BUYERS = 40
READERS = 4


async def test_concurrent_pages_never_show_stock_an_acknowledged_order_took(
    backend_settings: Settings,
) -> None:
    """Over HTTP, pages read while orders are placed: every page balances, never goes back up
    for one reader, and never shows a unit that an order acknowledged before the page was
    requested still took (stock is read live, not from a cache)."""
    settings = fast_provider(backend_settings)
    with ServerProcess(settings) as server:
        async with rush_client(server.url) as client:
            tokens = await buyer_tokens(client, server.settings, BUYERS)
            drop = await open_drop(client, stock=BUYERS, limit=1)
            acknowledged = 0
            buying = True
            seen: list[list[tuple[int, dict[str, int]]]] = [[] for _ in range(READERS)]

            async def buy(session: aiohttp.ClientSession, token: str) -> None:
                nonlocal acknowledged
                async with session.post(
                    f"/v1/drops/{drop['id']}/orders",
                    json={"quantity": 1},
                    headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
                ) as response:
                    assert response.status == 201, await response.text()
                acknowledged += 1

            async def read(session: aiohttp.ClientSession, pages: list[Any]) -> None:
                while buying:
                    before = acknowledged
                    async with session.get(f"/v1/drops/{drop['id']}/page") as response:
                        assert response.status == 200, await response.text()
                        pages.append((before, (await response.json())["stock"]))

            async with aiohttp.ClientSession(server.url) as session:
                readers = [asyncio.create_task(read(session, pages)) for pages in seen]
                await asyncio.gather(*(buy(session, token) for token in tokens.values()))
                buying = False
                await asyncio.gather(*readers)
            audit = await settled_audit(client, server.settings, drop["id"])
            final = await page_of(client, drop["id"])

    assert sum(len(pages) for pages in seen) >= READERS
    for pages in seen:
        previous = BUYERS
        for before, stock in pages:
            assert stock["available"] + stock["reserved"] + stock["sold"] == BUYERS
            assert stock["available"] <= BUYERS - before
            assert stock["available"] <= previous
            previous = stock["available"]
    assert final["stock"] == {
        name: audit[name] for name in ("stock", "available", "reserved", "sold")
    }
    assert final["stock"]["sold"] == BUYERS


async def _until_live(client: Any, drop_id: str) -> None:
    for _ in range(100):
        if (await client.get(f"/v1/drops/{drop_id}")).json()["status"] == "live":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the drop never went live")
