"""Rate limiting at the gateway: the GCRA script on the KV contract (fakeredis and Redis), the
middleware in process, and bursts of concurrent requests over HTTP against real servers."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
from litestar.testing import AsyncTestClient
from multidict import CIMultiDict

from dropsim.app import create_app
from dropsim.gateway.gcra import Budgets, Decision, RateGate
from dropsim.gateway.limits import ClassLimits, Limit, RouteClass, route_class_of
from dropsim.ports import KeyValueStore
from dropsim.settings import Settings, load_settings
from dropsim.testing import LOOPBACK_LIMITS, ServerProcess
from tests.apiclient import bearer, make_creator, make_drop, sign_up
from tests.rush import admin_token

SECOND = 1_000_000
NOW = 1_800_000_000 * SECOND  # a fixed instant (microseconds) for the script tests

# --- limits and route classes (pure) ------------------------------------------------------------


def test_limits_parse_rate_unit_and_burst() -> None:
    assert Limit.parse("5/s:10") == Limit(per_second=5.0, burst=10)
    assert Limit.parse("30/m:5").interval_us == 2 * SECOND
    assert Limit.parse("100/10s:20").interval_us == SECOND // 10
    assert Limit.parse("1/h:2").window_seconds == 7200
    assert ClassLimits.parse("1/s:5, 20/s:60") == ClassLimits(
        user=Limit(1.0, 5), ip=Limit(20.0, 60)
    )
    for wrong in ("5/s", "5:10", "0/s:3", "5/s:0", "5/d:1", "x/s:1"):
        with pytest.raises(ValueError, match=r"RATE/UNIT:BURST|above 0"):
            Limit.parse(wrong)
    for wrong in ("1/s:5", "1/s:5,1/s:5,1/s:5"):
        with pytest.raises(ValueError, match=r"USER,IP"):
            ClassLimits.parse(wrong)


def test_bad_limit_settings_fail_with_one_line() -> None:
    from dropsim.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"rate_limit_orders: .*USER,IP"):
        load_settings(rate_limit_orders="5/s:10")


def test_route_classes() -> None:
    assert route_class_of("POST", "/v1/drops/{drop_id:str}/orders") is RouteClass.ORDERS
    assert route_class_of("POST", "/v1/drops") is RouteClass.WRITES
    assert route_class_of("POST", "/v1/drops/{drop_id:str}/cancel") is RouteClass.WRITES
    assert route_class_of("PUT", "/v1/me/following/{creator_id:str}") is RouteClass.WRITES
    assert route_class_of("DELETE", "/v1/me/following/{creator_id:str}") is RouteClass.WRITES
    assert route_class_of("POST", "/v1/auth/login") is RouteClass.WRITES
    assert route_class_of("GET", "/v1/drops/{drop_id:str}") is RouteClass.READS
    assert route_class_of("GET", "/v1/stream") is RouteClass.STREAM
    assert route_class_of("POST", "/v1/stream/tickets") is RouteClass.STREAM
    for method, path in [
        ("GET", "/health/live"),
        ("GET", "/metrics"),
        ("GET", "/schema/openapi.json"),
        ("GET", "/"),
        ("GET", "/{file_path:path}"),
        ("POST", "/v1/payments/callback"),
    ]:
        assert route_class_of(method, path) is None, path


# --- the GCRA script on the KV contract --------------------------------------------------------


async def decide(gate: RateGate, budgets: Budgets, now_us: int) -> Decision:
    """One request's decision at `now_us`."""
    [decision] = await gate.decide([budgets], now_us=now_us)
    return decision


async def test_a_fresh_key_admits_exactly_the_burst(kv: KeyValueStore) -> None:
    gate, limit = RateGate(kv), Limit.parse("1/s:5")
    decisions = [await decide(gate, [("k", limit)], NOW) for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.budgets[0].remaining for d in decisions] == [4, 3, 2, 1, 0, 0, 0]
    assert [d.budgets[0].reset_us for d in decisions] == [n * SECOND for n in (1, 2, 3, 4, 5, 5, 5)]
    assert decisions[5].retry_after_us == SECOND  # one emission interval
    assert decisions[0].retry_after_us == 0


async def test_budget_refills_one_request_per_emission_interval(kv: KeyValueStore) -> None:
    gate, limit = RateGate(kv), Limit.parse("2/s:3")  # T = 500 ms
    for _ in range(3):
        assert (await decide(gate, [("k", limit)], NOW)).allowed
    early = await decide(gate, [("k", limit)], NOW + 500_000 - 1)
    assert not early.allowed
    assert early.retry_after_us == 1
    assert (await decide(gate, [("k", limit)], NOW + 500_000)).allowed
    assert not (await decide(gate, [("k", limit)], NOW + 500_000)).allowed
    # idle for the whole window: the full burst is back, and not more
    later = NOW + 500_000 + 3 * 500_000
    assert [(await decide(gate, [("k", limit)], later)).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


async def test_retry_after_is_the_longest_wait_of_the_budgets(kv: KeyValueStore) -> None:
    gate = RateGate(kv)
    user, ip = Limit.parse("1/s:2"), Limit.parse("1/4s:2")  # T = 1 s and 4 s
    budgets = [("user", user), ("ip", ip)]
    assert (await decide(gate, budgets, NOW)).allowed
    assert (await decide(gate, budgets, NOW)).allowed
    refused = await decide(gate, budgets, NOW + 250_000)
    assert not refused.allowed
    assert [b.wait_us for b in refused.budgets] == [750_000, 3_750_000]
    assert refused.retry_after_us == 3_750_000
    assert [b.remaining for b in refused.budgets] == [0, 0]


async def test_a_refusal_charges_no_budget(kv: KeyValueStore) -> None:
    """The user's budget refuses; the address's budget, which had room, is not charged."""
    gate = RateGate(kv)
    user, ip = Limit.parse("1/m:1"), Limit.parse("1/m:3")
    assert (await decide(gate, [("alice", user), ("addr", ip)], NOW)).allowed
    for _ in range(5):
        refused = await decide(gate, [("alice", user), ("addr", ip)], NOW)
        assert not refused.allowed
        assert refused.budgets[1].remaining == 2
    bob = [(await decide(gate, [("bob", ip), ("addr", ip)], NOW)).allowed for _ in range(3)]
    assert bob == [True, True, False]


async def test_one_call_decides_its_requests_in_order(kv: KeyValueStore) -> None:
    gate, limit = RateGate(kv), Limit.parse("1/m:2")
    other = Limit.parse("1/m:5")
    decisions = await gate.decide(
        [[("a", limit)], [("a", limit), ("b", other)], [("a", limit)], [("b", other)]],
        now_us=NOW,
    )
    assert [d.allowed for d in decisions] == [True, True, False, True]
    assert [len(d.budgets) for d in decisions] == [1, 2, 1, 1]
    assert decisions[1].budgets[1].remaining == 4
    assert decisions[3].budgets[0].remaining == 3  # the refusal in between charged nothing


async def test_concurrent_checks_admit_exactly_the_burst(kv: KeyValueStore) -> None:
    """Checks from many requests at once gather into shared calls; the count stays exact."""
    gate = RateGate(kv, max_batch=16)
    user, ip = Limit.parse("1/m:7"), Limit.parse("1/m:1000")
    decisions = await asyncio.gather(
        *(gate.check([(f"user{n % 3}", user), ("addr", ip)]) for n in range(90))
    )
    admitted = Counter(n % 3 for n, d in enumerate(decisions) if d.allowed)
    assert admitted == {0: 7, 1: 7, 2: 7}
    assert (await gate.check([("addr", ip)])).budgets[0].remaining == 1000 - 21 - 1


async def test_keys_expire_once_their_debt_is_paid(kv: KeyValueStore) -> None:
    """On the KV server's clock (no `now_us`): an idle budget leaves no key behind."""
    gate, limit = RateGate(kv), Limit.parse("10/s:3")  # T = 100 ms
    for _ in range(2):
        assert (await gate.check([("k", limit)])).allowed
    assert 0 < await kv.pttl("k") <= 200
    await asyncio.sleep(0.25)
    assert await kv.exists("k") == 0
    assert (await gate.check([("k", limit)])).budgets[0].remaining == 2


# --- the middleware in process ------------------------------------------------------------------


def strict(settings: Settings, **overrides: object) -> Settings:
    """`settings` with a small reads budget (2 per user, 3 per address) and the given changes."""
    return settings.model_copy(update={"rate_limit_reads": "1/m:2,1/m:3", **overrides})


async def statuses(client: AsyncTestClient[Any], path: str, count: int, **kwargs: Any) -> list[int]:
    return [(await client.get(path, **kwargs)).status_code for _ in range(count)]


async def test_health_metrics_page_schema_and_callback_are_not_limited(
    settings: Settings,
) -> None:
    async with AsyncTestClient(create_app(strict(settings))) as client:
        for path in ("/health/live", "/health/ready", "/metrics", "/", "/schema/openapi.json"):
            responses = [await client.get(path) for _ in range(5)]
            assert [r.status_code for r in responses] == [200] * 5, path
            assert all("ratelimit" not in r.headers for r in responses), path
        for _ in range(5):
            callback = await client.post("/v1/payments/callback", content=b"{}")
            assert callback.status_code == 400  # unsigned, refused by the payment service
            assert "ratelimit" not in callback.headers
        assert await statuses(client, "/v1/drops", 4) == [200, 200, 200, 429]


async def test_disabled_limiter_sends_no_headers_and_never_refuses(settings: Settings) -> None:
    app = create_app(strict(settings, rate_limit_enabled=False))
    async with AsyncTestClient(app) as client:
        responses = [await client.get("/v1/drops") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 6
    assert all("ratelimit" not in r.headers for r in responses)


async def test_forwarded_for_is_ignored_unless_a_proxy_is_trusted(settings: Settings) -> None:
    async with AsyncTestClient(create_app(strict(settings))) as client:
        spoofed = [
            (await client.get("/v1/drops", headers={"X-Forwarded-For": f"10.0.0.{n}"})).status_code
            for n in range(4)
        ]
    assert spoofed == [200, 200, 200, 429]  # one peer, one budget, whatever the header says

    app = create_app(strict(settings, rate_limit_trusted_proxies=1))
    async with AsyncTestClient(app) as client:
        # the proxy appends the address it saw; what the client wrote to the left is ignored
        first = [f"6.6.6.{n}, 10.0.0.1" for n in range(4)]
        assert await statuses_with(client, first) == [200, 200, 200, 429]
        assert await statuses_with(client, ["10.0.0.2"]) == [200]

    app = create_app(strict(settings, rate_limit_trusted_proxies=2))
    async with AsyncTestClient(app) as client:
        # fewer entries than trusted hops: the TCP peer's budget
        assert await statuses_with(client, ["9.9.9.9", "8.8.8.8", "7.7.7.7", "1.2.3.4"]) == [
            200,
            200,
            200,
            429,
        ]
        assert await statuses_with(client, ["9.9.9.9, 10.0.0.3"]) == [200]


async def statuses_with(client: AsyncTestClient[Any], forwarded: list[str]) -> list[int]:
    return [
        (await client.get("/v1/drops", headers={"X-Forwarded-For": value})).status_code
        for value in forwarded
    ]


async def test_a_429_is_not_stored_as_an_idempotency_record(backend_settings: Settings) -> None:
    """Refused by the limiter, the same Idempotency-Key later makes its order normally."""
    settings = backend_settings.model_copy(update={"rate_limit_orders": "4/s:1,100/s:100"})
    async with AsyncTestClient(create_app(settings)) as client:
        _, creator = await make_creator(client)
        drop = await make_drop(client, creator, starts_in=0.2, stock=10, per_user_limit=5)
        await asyncio.sleep(0.3)
        _, token = await sign_up(client)
        path = f"/v1/drops/{drop['id']}/orders"

        def order(key: str) -> Any:
            headers = {**bearer(token), "Idempotency-Key": key}
            return client.post(path, json={"quantity": 1}, headers=headers)

        assert (await order("first")).status_code == 201
        refused = await order("second")
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "rate_limited"
        await asyncio.sleep(int(refused.headers["retry-after"]))
        retried = await order("second")
        assert retried.status_code == 201, retried.text
        assert "idempotency-replayed" not in retried.headers
        mine = (await client.get("/v1/me/orders", headers=bearer(token))).json()["items"]
        assert sorted(o["idempotency_key"] for o in mine) == ["first", "second"]


# --- bursts over HTTP against real servers ------------------------------------------------------

ORDERS_LIMITS = "1/m:5,1/m:8"
"""Per user 5 at once, per address 8; one a minute comes back, so a burst refills nothing."""
POLICY = '"orders-user";q=5;w=300, "orders-ip";q=8;w=480'
_addresses = itertools.count(1)


def fresh_address() -> str:
    """A client address no other test used (the servers trust one proxy hop)."""
    return f"198.51.100.{next(_addresses)}"


def limited(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "rate_limit_orders": ORDERS_LIMITS,
            "rate_limit_reads": "1/m:3,1/m:30",
            "rate_limit_writes": LOOPBACK_LIMITS,  # set-up calls all come from 127.0.0.1
            "rate_limit_trusted_proxies": 1,
        }
    )


@pytest.fixture(scope="module")
def server(shared_backend_settings: Settings) -> Iterator[ServerProcess]:
    with ServerProcess(limited(shared_backend_settings)) as running:
        yield running


@dataclass
class Reply:
    status: int
    headers: CIMultiDict[str]
    body: dict[str, Any]


@dataclass
class Buyer:
    user_id: str
    token: str


async def buyers(url: str, settings: Settings, count: int) -> list[Buyer]:
    prefix = f"usr_rl{uuid.uuid4().hex[:8]}_"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        minted = await client.post(
            "/v1/admin/tokens",
            json={"user_ids": [f"{prefix}{n}" for n in range(count)]},
            headers=bearer(admin_token(settings)),
        )
    assert minted.status_code == 200, minted.text
    return [Buyer(user, token) for user, token in minted.json()["tokens"].items()]


async def live_drop(url: str) -> str:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        _, creator = await make_creator(client)
        drop = await make_drop(client, creator, starts_in=0.3, stock=1000, per_user_limit=100)
    await asyncio.sleep(0.4)
    return str(drop["id"])


async def burst(requests: list[tuple[str, str, Buyer, str]]) -> list[Reply]:
    """All `(base url, drop id, buyer, address)` orders at once, each on its own connection."""
    connector = aiohttp.TCPConnector(limit=len(requests), force_close=True)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def one(url: str, drop_id: str, buyer: Buyer, address: str) -> Reply:
            headers = {
                **bearer(buyer.token),
                "Idempotency-Key": str(uuid.uuid4()),
                "X-Forwarded-For": address,
            }
            async with session.post(
                f"{url}/v1/drops/{drop_id}/orders", json={"quantity": 1}, headers=headers
            ) as response:
                body = await response.json(content_type=None)
                return Reply(response.status, CIMultiDict(response.headers), body)

        return list(await asyncio.gather(*(one(*request) for request in requests)))


def state(reply: Reply) -> dict[str, dict[str, int]]:
    """The `RateLimit` field as {policy: {"r": remaining, "t": seconds}}."""
    found = {}
    for item in reply.headers["RateLimit"].split(","):
        name, *params = item.strip().split(";")
        found[name.strip('"')] = {key: int(value) for key, value in (p.split("=") for p in params)}
    return found


def allowed(replies: list[Reply]) -> list[Reply]:
    return [reply for reply in replies if reply.status != 429]


def refused_by(replies: list[Reply]) -> Counter[str]:
    return Counter(reply.body["scope"] for reply in replies if reply.status == 429)


async def refusals_counted(url: str) -> dict[str, float]:
    """`dropsim_rate_limited_total` of the orders class by scope, from the server's /metrics."""
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    pattern = r'dropsim_rate_limited_total\{route_class="orders",scope="(\w+)"\} ([0-9.e+]+)'
    return {scope: float(value) for scope, value in re.findall(pattern, text)}


async def test_a_burst_admits_exactly_the_burst_size(server: ServerProcess) -> None:
    drop_id = await live_drop(server.url)
    [buyer] = await buyers(server.url, server.settings, 1)
    address = fresh_address()
    before = await refusals_counted(server.url)

    replies = await burst([(server.url, drop_id, buyer, address)] * 30)

    admitted = allowed(replies)
    assert [reply.status for reply in admitted] == [201] * 5
    # each admitted request took one unit of both budgets, none took the same one twice
    assert sorted(state(r)["orders-user"]["r"] for r in admitted) == [0, 1, 2, 3, 4]
    assert sorted(state(r)["orders-ip"]["r"] for r in admitted) == [3, 4, 5, 6, 7]
    assert all(reply.headers["RateLimit-Policy"] == POLICY for reply in replies)
    refused = [reply for reply in replies if reply.status == 429]
    assert len(refused) == 25
    for reply in refused:
        assert reply.headers["Content-Type"].startswith("application/problem+json")
        assert reply.body["code"] == "rate_limited"
        assert reply.body["status"] == 429
        assert reply.body["scope"] == "user"
        # the sixth unit comes back one interval (60 s) after the first was taken
        assert 58 <= int(reply.headers["Retry-After"]) <= 60
        assert reply.body["retry_after"] == int(reply.headers["Retry-After"])
        budgets = state(reply)
        assert budgets["orders-user"]["r"] == 0
        assert 298 <= budgets["orders-user"]["t"] <= 300  # five intervals to full
        assert budgets["orders-ip"]["r"] == 3  # refusals charge nothing
    after = await refusals_counted(server.url)
    assert after["user"] - before["user"] == 25
    assert after["ip"] == before["ip"]


async def test_users_share_their_address_budget_and_keep_their_own(
    server: ServerProcess,
) -> None:
    drop_id = await live_drop(server.url)
    alice, bob, carol = await buyers(server.url, server.settings, 3)
    shared, other = fresh_address(), fresh_address()

    first = await burst([(server.url, drop_id, alice, shared)] * 6)
    assert len(allowed(first)) == 5  # alice's own budget
    assert refused_by(first) == {"user": 1}

    second = await burst([(server.url, drop_id, bob, shared)] * 6)
    assert len(allowed(second)) == 3  # what alice left of the address's 8
    assert refused_by(second) == {"ip": 3}

    third = await burst([(server.url, drop_id, alice, other)] * 6)
    assert allowed(third) == []  # alice's budget follows her to another address
    assert refused_by(third) == {"user": 6}

    fourth = await burst([(server.url, drop_id, carol, other)] * 6)
    assert len(allowed(fourth)) == 5  # alice's refusals there cost the address nothing


async def test_two_users_bursting_together_from_one_address(server: ServerProcess) -> None:
    drop_id = await live_drop(server.url)
    alice, bob = await buyers(server.url, server.settings, 2)
    address = fresh_address()
    requests = [(server.url, drop_id, who, address) for who in (alice, bob) * 8]
    replies = await burst(requests)
    assert len(allowed(replies)) == 8  # the address's burst, whoever got it
    per_user = Counter(
        request[2].user_id
        for request, reply in zip(requests, replies, strict=True)
        if reply.status != 429
    )
    assert max(per_user.values()) <= 5
    assert refused_by(replies)["ip"] >= 3  # at least 3 of the 8 refused are the address's doing


async def test_classes_have_separate_budgets(server: ServerProcess) -> None:
    drop_id = await live_drop(server.url)
    [buyer] = await buyers(server.url, server.settings, 1)
    address = fresh_address()
    orders = await burst([(server.url, drop_id, buyer, address)] * 8)
    assert len(allowed(orders)) == 5
    async with httpx.AsyncClient(base_url=server.url) as client:
        headers = {**bearer(buyer.token), "X-Forwarded-For": address}
        reads = [await client.get("/v1/me/orders", headers=headers) for _ in range(4)]
    assert [r.status_code for r in reads] == [200, 200, 200, 429]
    assert len(reads[0].json()["items"]) == 5
    assert reads[0].headers["RateLimit-Policy"] == '"reads-user";q=3;w=180, "reads-ip";q=30;w=1800'
    assert reads[0].headers["RateLimit"].startswith('"reads-user";r=2;')


@pytest.mark.slow
async def test_two_server_processes_share_the_limit(real_backend_settings: Settings) -> None:
    settings = limited(real_backend_settings)
    with ServerProcess(settings) as one, ServerProcess(settings) as two:
        drop_id = await live_drop(one.url)
        [buyer] = await buyers(one.url, one.settings, 1)
        address = fresh_address()
        replies = await burst([(server.url, drop_id, buyer, address) for server in (one, two) * 12])
    admitted = allowed(replies)
    assert [reply.status for reply in admitted] == [201] * 5
    assert sorted(state(r)["orders-user"]["r"] for r in admitted) == [0, 1, 2, 3, 4]
