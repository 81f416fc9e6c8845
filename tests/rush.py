"""A drop rush over real HTTP: many buyers at once, double clicks, retries; shared by tests."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.settings import Settings
from tests.apiclient import bearer, make_creator, make_drop

CONNECTIONS = 200


def rush_client(url: str) -> httpx.AsyncClient:
    """A client for setting a rush up and checking it afterwards."""
    return httpx.AsyncClient(base_url=url, timeout=30)


@dataclass
class RushResult:
    """What the buyers saw: every response by (user, key)."""

    created: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    codes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def admin_token(settings: Settings) -> str:
    return TokenIssuer(settings.signing_secret(), 3600).issue("test-admin", Role.ADMIN)


async def buyer_tokens(
    client: httpx.AsyncClient, settings: Settings, count: int, prefix: str = "usr_buyer"
) -> dict[str, str]:
    minted = await client.post(
        "/v1/admin/tokens",
        json={"user_ids": [f"{prefix}{i}" for i in range(count)]},
        headers=bearer(admin_token(settings)),
    )
    assert minted.status_code == 200, minted.text
    tokens: dict[str, str] = minted.json()["tokens"]
    return tokens


async def open_drop(
    client: httpx.AsyncClient, *, stock: int, limit: int, starts_in: float = 1.0
) -> dict[str, Any]:
    _, creator = await make_creator(client)
    drop = await make_drop(
        client, creator, starts_in=starts_in, lasts=3600, stock=stock, per_user_limit=limit
    )
    delay = drop_starts(drop) - time.time()
    if delay > 0:
        await asyncio.sleep(delay + 0.05)
    return drop


def drop_starts(drop: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(drop["starts_at"]).timestamp()


async def rush(
    client: httpx.AsyncClient,
    drop_id: str,
    tokens: dict[str, str],
    *,
    keys_per_buyer: int = 3,
    clicks_per_key: int = 2,
    seed: int = 7,
    server_may_die: bool = False,
) -> RushResult:
    """Every buyer tries `keys_per_buyer` purchases, each clicked `clicks_per_key` times, all
    launched at once (shuffled) over `CONNECTIONS` connections; a timeout or an "in flight"
    answer is retried with the same key, as a client should.

    The load goes through aiohttp: httpx's pool spends milliseconds of client CPU per request
    at this concurrency, which would measure the test, not the server.
    """
    rng = random.Random(seed)
    attempts = [
        (user, token, str(uuid.UUID(int=rng.getrandbits(128))))
        for user, token in tokens.items()
        for _ in range(keys_per_buyer)
    ]
    clicks = [attempt for attempt in attempts for _ in range(clicks_per_key)]
    rng.shuffle(clicks)
    result = RushResult()
    path = f"/v1/drops/{drop_id}/orders"

    async def click(session: aiohttp.ClientSession, user: str, token: str, key: str) -> None:
        for _ in range(200):
            try:
                async with session.post(
                    path,
                    json={"quantity": 1},
                    headers={**bearer(token), "Idempotency-Key": key},
                ) as response:
                    status, body = response.status, await response.json(content_type=None)
            except (TimeoutError, aiohttp.ClientError):
                if server_may_die:
                    result.codes["connection_lost"] += 1
                    return
                continue  # retry with the same key: it can never buy twice
            if status == 409 and body["code"] == "idempotency_key_in_flight":
                result.codes["idempotency_key_in_flight"] += 1
                await asyncio.sleep(0.2)
                continue
            result.statuses[status] += 1
            if status == 201:
                result.created[(user, key)].add(body["id"])
            else:
                result.codes[body.get("code", str(status))] += 1
            return
        raise AssertionError(f"{user} could not finish {key}")

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        str(client.base_url), connector=connector, timeout=timeout
    ) as session:
        await asyncio.gather(*(click(session, *attempt) for attempt in clicks))
    return result


async def settled_audit(
    client: httpx.AsyncClient, settings: Settings, drop_id: str, within: float = 30.0
) -> dict[str, Any]:
    """The drop's audit once everything has settled (see `at_rest`)."""
    deadline = time.monotonic() + within
    while True:
        audit = await client.get(
            f"/v1/admin/drops/{drop_id}/audit", headers=bearer(admin_token(settings))
        )
        assert audit.status_code == 200, audit.text
        report: dict[str, Any] = audit.json()
        # at rest: no reservation or pending order left, and refunds of payments that came
        # back after their unit had gone (they are orphans until the provider confirms)
        at_rest = report["reserved"] == 0 and report["pending_orders_sql"] == 0
        if at_rest and not report["orphan_payments"]:
            if not report["ok"]:  # say which invariant broke (pytest truncates the dict)
                broken = [name for name, ok in report["checks"].items() if not ok]
                details = {k: v for k, v in report.items() if k != "checks"}
                raise AssertionError(f"broken: {broken}; {details}")
            return report
        assert time.monotonic() < deadline, f"orders still pending: {report}"
        await asyncio.sleep(0.2)


async def orders_of(client: httpx.AsyncClient, token: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/me/orders", params=params, headers=bearer(token))).json()
        found.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def fast_provider(settings: Settings, **faults: float) -> Settings:
    """Settings with a quick provider that never declines or loses a callback (unless `faults`
    say so) and holds long enough that nothing lapses by accident."""
    terms: dict[str, float] = {
        "provider_latency_median_ms": 20,
        "provider_latency_p99_ms": 100,
        "provider_failure_rate": 0.0,
        "provider_duplicate_rate": 0.3,  # a callback twice must not count a confirmation twice
        "provider_callback_loss_rate": 0.0,
        "reservation_hold_seconds": 60,
    }
    return settings.model_copy(update=terms | faults)
