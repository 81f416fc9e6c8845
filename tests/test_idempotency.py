"""Idempotency of POST /v1/drops/{id}/orders, as Stripe and the IETF draft define it, over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dropsim.backends.memory import open_memory_kv
from dropsim.backends.sharding import shard_of
from dropsim.orders.idempotency import KEPT_SECONDS, IdempotencyRecords, record_key
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_creator, make_drop, sign_up


@pytest.fixture(scope="module")
def server(shared_backend_settings: Settings) -> Iterator[ServerProcess]:
    with ServerProcess(shared_backend_settings) as running:
        yield running


@pytest.fixture
async def client(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        yield http


async def live_drop(client: httpx.AsyncClient, **terms: Any) -> str:
    _, token = await make_creator(client)
    drop = await make_drop(client, token, starts_in=0.2, **terms)
    await asyncio.sleep(0.3)
    return str(drop["id"])


def order(
    client: httpx.AsyncClient,
    drop_id: str,
    token: str,
    key: str | None,
    body: dict[str, Any] | None = None,
) -> Any:
    headers = bearer(token) | ({"Idempotency-Key": key} if key is not None else {})
    return client.post(f"/v1/drops/{drop_id}/orders", json=body or {"quantity": 1}, headers=headers)


async def test_missing_key_is_refused_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client)
    _, token = await sign_up(client)
    missing = await order(client, drop_id, token, None)
    assert missing.status_code == 400
    assert missing.json()["code"] == "idempotency_key_missing"
    assert (await client.get("/v1/me/orders", headers=bearer(token))).json()["items"] == []


async def test_repeat_replays_the_stored_response(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client, stock=5)
    _, token = await sign_up(client)
    first = await order(client, drop_id, token, "key-1")
    again = await order(client, drop_id, token, "key-1")
    assert first.status_code == again.status_code == 201
    assert "idempotency-replayed" not in first.headers
    assert again.headers["idempotency-replayed"] == "true"
    assert again.content == first.content
    orders = (await client.get("/v1/me/orders", headers=bearer(token))).json()["items"]
    assert [o["id"] for o in orders] == [first.json()["id"]]


async def test_same_key_different_body_is_422(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client, stock=5, per_user_limit=3)
    _, token = await sign_up(client)
    assert (await order(client, drop_id, token, "key-2")).status_code == 201
    other = await order(client, drop_id, token, "key-2", {"quantity": 2})
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"


async def test_validation_failures_are_not_stored(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client, stock=5)
    _, token = await sign_up(client)
    invalid = await order(client, drop_id, token, "key-3", {"quantity": 0})
    assert invalid.status_code == 400
    valid = await order(client, drop_id, token, "key-3", {"quantity": 1})
    assert valid.status_code == 201, valid.text
    assert "idempotency-replayed" not in valid.headers


async def test_keys_belong_to_their_user(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client, stock=5)
    _, alice = await sign_up(client)
    _, bob = await sign_up(client)
    first = await order(client, drop_id, alice, "shared-key")
    second = await order(client, drop_id, bob, "shared-key")
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] != second.json()["id"]
    assert "idempotency-replayed" not in second.headers


async def test_refusals_are_stored_and_replayed(client: httpx.AsyncClient) -> None:
    drop_id = await live_drop(client, stock=2)
    _, winner = await sign_up(client)
    _, runner_up = await sign_up(client)
    _, loser = await sign_up(client)
    assert (await order(client, drop_id, winner, "w")).status_code == 201
    limit = await order(client, drop_id, winner, "w2")
    assert limit.status_code == 409
    assert limit.json()["code"] == "limit_reached"
    assert (await order(client, drop_id, winner, "w2")).json() == limit.json()
    assert (await order(client, drop_id, runner_up, "r")).status_code == 201
    sold_out = await order(client, drop_id, loser, "l")
    assert sold_out.status_code == 409
    assert sold_out.json()["code"] == "sold_out"
    replay = await order(client, drop_id, loser, "l")
    assert replay.status_code == 409
    assert replay.json() == sold_out.json()
    # once sold out, a repeat of a successful order still replays its 201, not "sold out"
    winner_again = await order(client, drop_id, winner, "w")
    assert winner_again.status_code == 201
    assert winner_again.headers["idempotency-replayed"] == "true"

    _, token = await make_creator(client)
    later = await make_drop(client, token, starts_in=3600)
    not_live = await order(client, later["id"], loser, "n")
    assert not_live.status_code == 409
    assert not_live.json()["code"] == "drop_not_live"


async def test_double_click_storm_makes_one_order(client: httpx.AsyncClient) -> None:
    """Twenty identical requests at once: one order; the rest replay it or are told to wait."""
    drop_id = await live_drop(client, stock=5)
    _, token = await sign_up(client)
    responses = await asyncio.gather(*(order(client, drop_id, token, "storm") for _ in range(20)))
    created = [r for r in responses if r.status_code == 201]
    fresh = [r for r in created if "idempotency-replayed" not in r.headers]
    assert len(fresh) == 1
    assert {r.json()["id"] for r in created} == {fresh[0].json()["id"]}
    assert all(r.status_code in (201, 409) for r in responses)
    assert all(
        r.json()["code"] == "idempotency_key_in_flight" for r in responses if r.status_code == 409
    )
    orders = (await client.get("/v1/me/orders", headers=bearer(token))).json()["items"]
    assert len(orders) == 1


@contextlib.asynccontextmanager
async def orders_table_locked(settings: Settings, user_id: str) -> AsyncIterator[None]:
    """Hold a write lock on the user's order shard so their order insert waits."""
    shard = shard_of(user_id, settings.shards)
    if settings.db_url.startswith("sqlite"):
        path = Path(settings.db_url.removeprefix("sqlite:///").replace("{shard}", str(shard)))
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            connection.execute("ROLLBACK")
            connection.close()
    else:
        pg = await asyncpg.connect(settings.db_url.replace("{shard}", str(shard)))
        transaction = pg.transaction()
        await transaction.start()
        await pg.execute("LOCK TABLE orders IN EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
            await pg.close()


async def test_repeat_while_the_first_is_running_is_409(
    client: httpx.AsyncClient, shared_backend_settings: Settings
) -> None:
    drop_id = await live_drop(client, stock=5)
    user_id, token = await sign_up(client)
    async with orders_table_locked(shared_backend_settings, user_id):
        first = asyncio.create_task(order(client, drop_id, token, "slow"))
        await asyncio.sleep(0.5)  # the first has claimed the key and waits for its insert
        assert not first.done()
        concurrent = await order(client, drop_id, token, "slow")
        assert concurrent.status_code == 409, concurrent.text
        assert concurrent.json()["code"] == "idempotency_key_in_flight"
    created = await first
    assert created.status_code == 201
    replay = await order(client, drop_id, token, "slow")
    assert replay.status_code == 201
    assert replay.headers["idempotency-replayed"] == "true"
    assert replay.content == created.content


async def test_finished_keys_are_kept_a_day() -> None:
    kv: Any = open_memory_kv()
    records = IdempotencyRecords(kv)
    await kv.hset(record_key("usr_1", "k"), mapping={"fp": "x", "state": "running"})
    await records.finish("usr_1", "k", 201, "{}")
    assert await kv.ttl(record_key("usr_1", "k")) >= KEPT_SECONDS - 1 >= 24 * 3600 - 1
    stored = await records.lookup("usr_1", "k")
    assert stored is not None
    assert (stored.running, stored.status, stored.body) == (False, 201, "{}")


async def test_asking_for_more_than_is_left_does_not_close_the_drop(
    client: httpx.AsyncClient,
) -> None:
    drop_id = await live_drop(client, stock=3, per_user_limit=3)
    _, first = await sign_up(client)
    _, greedy = await sign_up(client)
    _, modest = await sign_up(client)
    assert (await order(client, drop_id, first, "two", {"quantity": 2})).status_code == 201
    too_many = await order(client, drop_id, greedy, "two-more", {"quantity": 2})
    assert too_many.status_code == 409
    assert too_many.json()["code"] == "sold_out"
    last_one = await order(client, drop_id, modest, "one", {"quantity": 1})
    assert last_one.status_code == 201, last_one.text
