"""The KV port contract (the `redis.asyncio.Redis` interface), run on fakeredis and real Redis,
and the event log and cache built on it."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import msgspec
import pytest
from redis.exceptions import ResponseError, WatchError

from dropsim.cache import Cache
from dropsim.eventlog import EventLog
from dropsim.events import CreatorFollowed, DropSoldOut
from dropsim.ports import KeyValueStore

# --- strings, counters, hashes ----------------------------------------------------------------


async def test_strings_expire_after_px(kv: KeyValueStore) -> None:
    assert await kv.get("missing") is None
    assert await kv.set("plain", "value") is True
    assert await kv.set("short", "lived", px=80) is True
    assert await kv.get("short") == "lived"
    assert 0 < await kv.pttl("short") <= 80
    assert await kv.pttl("plain") == -1
    assert await kv.pttl("missing") == -2

    await asyncio.sleep(0.15)

    assert await kv.get("short") is None
    assert await kv.get("plain") == "value"
    assert await kv.exists("short", "plain") == 1


async def test_counters(kv: KeyValueStore) -> None:
    assert await kv.incr("stock") == 1
    assert await kv.incrby("stock", 9) == 10
    assert await kv.decr("stock") == 9
    assert await kv.decrby("stock", 10) == -1
    assert await kv.get("stock") == "-1"  # decode_responses: strings out
    await kv.set("text", "abc")
    with pytest.raises(ResponseError):
        await kv.incr("text")


async def test_hashes(kv: KeyValueStore) -> None:
    assert await kv.hgetall("nothing") == {}
    assert await kv.hset("drop:1", mapping={"stock": "10", "title": "Hoodie ✓"}) == 2
    assert await kv.hget("drop:1", "title") == "Hoodie ✓"
    assert await kv.hget("drop:1", "missing") is None
    assert await kv.hincrby("drop:1", "stock", -3) == 7
    assert await kv.hgetall("drop:1") == {"stock": "7", "title": "Hoodie ✓"}
    assert await kv.hdel("drop:1", "title", "missing") == 1
    assert await kv.hgetall("drop:1") == {"stock": "7"}


# --- Lua --------------------------------------------------------------------------------------

# -1: no such stock, -2: not enough left, otherwise the stock left after taking ARGV[1].
TAKE_STOCK = """
local stock = redis.call('GET', KEYS[1])
if not stock then return -1 end
local want = tonumber(ARGV[1])
if tonumber(stock) < want then return -2 end
return redis.call('DECRBY', KEYS[1], want)
"""


async def test_a_lua_script_checks_and_decrements_atomically(kv: KeyValueStore) -> None:
    take = kv.register_script(TAKE_STOCK)
    assert await take(keys=["stock:x"], args=[1]) == -1
    await kv.set("stock:x", 5)
    results = [await take(keys=["stock:x"], args=[want]) for want in (2, 4, 3, 1, 1)]
    assert results == [3, -2, 0, -2, -2]

    await kv.set("stock:y", 10)
    concurrent = await asyncio.gather(*(take(keys=["stock:y"], args=[1]) for _ in range(30)))
    assert sorted(concurrent, reverse=True) == [*range(9, -1, -1), *([-2] * 20)]  # no oversell
    assert await kv.get("stock:y") == "0"


async def test_a_lua_error_surfaces_as_an_exception(kv: KeyValueStore) -> None:
    with pytest.raises(ResponseError, match="boom"):
        await kv.register_script("error('boom')")()
    with pytest.raises(ResponseError, match="SOLD_OUT"):
        await kv.register_script("return redis.error_reply('SOLD_OUT')")()
    with pytest.raises(ResponseError):
        await kv.register_script("return redis.call('NO_SUCH_COMMAND')")()
    await kv.set("text", "abc")
    with pytest.raises(ResponseError):
        await kv.register_script("return redis.call('INCR', KEYS[1])")(keys=["text"])


# --- transactions and locks -------------------------------------------------------------------


async def test_a_transactional_pipeline_is_isolated(kv: KeyValueStore) -> None:
    """MULTI/EXEC: no other client sees half of it (it is not rolled back on a failed command)."""
    torn: list[tuple[str | None, str | None]] = []

    async def write() -> None:
        for _ in range(20):
            async with kv.pipeline(transaction=True) as pipe:
                pipe.incr("a")
                await asyncio.sleep(0)  # nothing is sent before execute()
                pipe.incr("b")
                await pipe.execute()

    async def read() -> None:
        for _ in range(20):
            async with kv.pipeline(transaction=True) as pipe:
                pipe.get("a")
                pipe.get("b")
                a, b = await pipe.execute()
            if a != b:
                torn.append((a, b))

    await asyncio.gather(*(write() for _ in range(5)), *(read() for _ in range(5)))
    assert torn == []
    assert await kv.mget("a", "b") == ["100", "100"]

    await kv.hset("h", "f", "1")
    async with kv.pipeline(transaction=True) as pipe:
        pipe.set("c", "1")
        pipe.incr("h")  # wrong type: this command fails, the others still apply
        pipe.incr("c")
        results = await pipe.execute(raise_on_error=False)
    assert results[0] is True
    assert isinstance(results[1], ResponseError)
    assert results[2] == 2


async def test_watch_detects_a_concurrent_write(kv: KeyValueStore) -> None:
    await kv.set("price", "10")
    async with kv.pipeline(transaction=True) as pipe:
        await pipe.watch("price")
        assert await pipe.get("price") == "10"
        await kv.set("price", "12")  # another client changes it
        pipe.multi()
        pipe.set("price", "11")
        with pytest.raises(WatchError):
            await pipe.execute()
    assert await kv.get("price") == "12"


async def test_set_nx_px_is_a_lock(kv: KeyValueStore) -> None:
    assert await kv.set("lock:drop:1", "owner-a", nx=True, px=100) is True
    assert await kv.set("lock:drop:1", "owner-b", nx=True, px=100) is None
    assert await kv.get("lock:drop:1") == "owner-a"

    release = kv.register_script(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
        "return 0"
    )
    assert await release(keys=["lock:drop:1"], args=["owner-b"]) == 0  # not b's to release
    assert await release(keys=["lock:drop:1"], args=["owner-a"]) == 1
    assert await kv.set("lock:drop:1", "owner-b", nx=True, px=100) is True

    await asyncio.sleep(0.15)  # an abandoned lock expires
    assert await kv.set("lock:drop:1", "owner-c", nx=True, px=100) is True


# --- streams ----------------------------------------------------------------------------------


def stream_order(entry_id: str) -> tuple[int, int]:
    millis, sequence = entry_id.split("-")
    return int(millis), int(sequence)


async def test_streams(kv: KeyValueStore) -> None:
    ids = [await kv.xadd("s", {"n": str(i)}, maxlen=1000, approximate=True) for i in range(5)]
    assert [stream_order(i) for i in ids] == sorted(stream_order(i) for i in ids)
    assert len(set(ids)) == 5

    everything = await kv.xrange("s")
    assert everything == [(entry_id, {"n": str(i)}) for i, entry_id in enumerate(ids)]
    after_second = await kv.xrange("s", min=f"({ids[1]}")
    assert [fields["n"] for _, fields in after_second] == ["2", "3", "4"]
    assert await kv.xrange("s", min=f"({ids[-1]}") == []
    assert [entry_id for entry_id, _ in await kv.xrange("s", min=f"({ids[0]}", count=2)] == ids[1:3]

    read = await kv.xread({"s": ids[2]}, count=10)
    assert [(name, [entry_id for entry_id, _ in entries]) for name, entries in read] == [
        ("s", ids[3:])
    ]

    started = time.monotonic()
    assert not await kv.xread({"s": ids[-1]}, block=50)  # nothing new: empty after the timeout
    waited = time.monotonic() - started
    assert 0.04 <= waited < 1.0


async def test_stream_maxlen_trims_roughly(kv: KeyValueStore) -> None:
    for i in range(350):
        await kv.xadd("capped", {"n": str(i)}, maxlen=100, approximate=True)
    length = await kv.xlen("capped")
    assert 100 <= length <= 200  # approximate: whole nodes are trimmed
    newest = await kv.xrevrange("capped", count=1)
    assert newest[0][1] == {"n": "349"}


# --- event log --------------------------------------------------------------------------------


async def test_event_log_publishes_in_order_and_reads_after_an_id(kv: KeyValueStore) -> None:
    log = EventLog(kv)
    events = [CreatorFollowed(creator_id="c1", user_id=f"u{i}") for i in range(5)]
    before = time.time()
    ids = [await log.publish(event) for event in events]
    ids.append(await log.publish(DropSoldOut(drop_id="d1", creator_id="c1")))
    after = time.time()

    assert [stream_order(i) for i in ids] == sorted(stream_order(i) for i in ids)
    assert len(set(ids)) == len(ids)

    everything = await log.read_after()
    assert [envelope.id for envelope in everything] == ids
    first = everything[0]
    assert first.type == "creator.followed"
    assert first.data == {"creator_id": "c1", "user_id": "u0"}
    assert before - 1 <= first.at <= after + 1
    assert (everything[-1].type, everything[-1].data) == (
        "drop.sold_out",
        {"drop_id": "d1", "creator_id": "c1"},
    )

    later = await log.read_after(ids[2])
    assert [envelope.id for envelope in later] == ids[3:]
    assert [envelope.data.get("user_id") for envelope in later] == ["u3", "u4", None]
    assert await log.read_after(ids[-1]) == []
    assert [envelope.id for envelope in await log.read_after(ids[0], count=2)] == ids[1:3]


async def test_concurrent_publishes_share_calls_and_keep_their_order(kv: KeyValueStore) -> None:
    log = EventLog(kv, stream="burst-events")
    events = [CreatorFollowed(creator_id="c1", user_id=f"u{i}") for i in range(300)]
    ids = await asyncio.gather(*(log.publish(event) for event in events))

    assert len(set(ids)) == len(ids)
    assert [stream_order(i) for i in ids] == sorted(stream_order(i) for i in ids)
    stored = await log.read_after(count=1000)
    assert [envelope.id for envelope in stored] == ids
    assert [envelope.data["user_id"] for envelope in stored] == [f"u{i}" for i in range(300)]


async def test_event_log_length_is_capped_roughly(kv: KeyValueStore) -> None:
    log = EventLog(kv, max_len=100, stream="capped-events")
    ids = [await log.publish(DropSoldOut(drop_id=f"d{i}", creator_id="c")) for i in range(350)]
    kept = await log.read_after(count=10_000)
    assert 100 <= len(kept) <= 200
    assert [envelope.id for envelope in kept] == ids[-len(kept) :]  # the newest are kept
    assert await kv.xlen("events") == 0  # its own stream only


# --- cache ------------------------------------------------------------------------------------


class Product(msgspec.Struct, frozen=True):
    id: str
    title: str
    price_cents: int


class Loader:
    """A loader that counts its calls, optionally slow or failing."""

    def __init__(self, value: Product | None, *, delay: float = 0.0) -> None:
        self.value = value
        self.delay = delay
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self) -> Product | None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


HOODIE = Product(id="p1", title="Hoodie ✓", price_cents=4_500)


async def test_cache_loads_once_then_serves_from_the_store(kv: KeyValueStore) -> None:
    cache = Cache(kv, ttl_seconds=30)
    load = Loader(HOODIE)

    assert await cache.get_or_load("product:p1", load, Product) == HOODIE
    assert await cache.get_or_load("product:p1", load, Product) == HOODIE
    assert load.calls == 1

    # the value lives in the KV store, so another process's cache sees it too
    other = Cache(kv, ttl_seconds=30)
    assert await other.get_or_load("product:p1", Loader(None), Product) == HOODIE


@pytest.mark.parametrize("delay", [0.0, 0.002])
async def test_cache_single_flight_on_a_cold_key(kv: KeyValueStore, delay: float) -> None:
    cache = Cache(kv, ttl_seconds=30)
    for attempt in range(20):  # the race it guards against does not show every time
        load = Loader(HOODIE, delay=delay)
        key = f"product:cold-{attempt}"
        results = await asyncio.gather(*(cache.get_or_load(key, load, Product) for _ in range(50)))
        assert results == [HOODIE] * 50
        assert load.calls == 1


class HeldReads:
    """The KV store with each GET answered only when the test releases it (to stage a race)."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv
        self.held: list[asyncio.Event] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def get(self, key: str) -> str | None:
        value = await self._kv.get(key)
        release = asyncio.Event()
        self.held.append(release)
        await release.wait()
        return value


async def test_cache_does_not_reload_for_a_lookup_sent_during_a_load(kv: KeyValueStore) -> None:
    """Caller B asks while A's lookup is in flight; A's load finishes before B's lookup would
    have answered (a miss, read before A stored the value). B must get A's value, not load."""
    store = HeldReads(kv)
    cache = Cache(cast(KeyValueStore, store), ttl_seconds=30)
    load = Loader(HOODIE)
    first = asyncio.create_task(cache.get_or_load("product:p1", load, Product))
    for _ in range(1000):
        if store.held:
            break
        await asyncio.sleep(0.001)
    second = asyncio.create_task(cache.get_or_load("product:p1", load, Product))
    await asyncio.sleep(0.02)  # B's lookup, if it sends one, is read now: a miss

    store.held[0].set()
    assert await first == HOODIE
    for release in store.held:
        release.set()
    assert await second == HOODIE
    assert load.calls == 1


async def test_cache_remembers_that_a_row_is_missing(kv: KeyValueStore) -> None:
    cache = Cache(kv, ttl_seconds=30)
    load = Loader(None)
    assert await cache.get_or_load("product:nope", load, Product) is None
    assert await cache.get_or_load("product:nope", load, Product) is None
    assert load.calls == 1


async def test_cache_invalidate_forces_a_reload(kv: KeyValueStore) -> None:
    cache = Cache(kv, ttl_seconds=30)
    load = Loader(HOODIE)
    await cache.get_or_load("product:p1", load, Product)
    await cache.get_or_load("product:p2", load, Product)

    load.value = Product(id="p1", title="Hoodie v2", price_cents=5_000)
    await cache.invalidate("product:p1", "product:p2")
    await cache.invalidate()  # nothing to forget is fine

    assert await cache.get_or_load("product:p1", load, Product) == load.value
    assert load.calls == 3


async def test_cache_ttls_have_jitter(kv: KeyValueStore) -> None:
    cache = Cache(kv, ttl_seconds=10)
    keys = [f"product:{i}" for i in range(20)]
    for key in keys:
        await cache.get_or_load(key, Loader(HOODIE), Product)
    ttls = [await kv.pttl(key) for key in keys]
    assert all(10_000 - 1_000 <= ttl <= 12_000 for ttl in ttls), ttls  # elapsed time < 1 s
    assert len(set(ttls)) > 10  # keys cached together do not expire together


async def test_cache_loader_error_reaches_every_waiter_and_is_not_cached(
    kv: KeyValueStore,
) -> None:
    cache = Cache(kv, ttl_seconds=30)
    load = Loader(HOODIE, delay=0.01)
    load.error = RuntimeError("database down")

    results = await asyncio.gather(
        *(cache.get_or_load("product:p1", load, Product) for _ in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(r, RuntimeError) and str(r) == "database down" for r in results)
    assert load.calls == 1
    assert await kv.get("product:p1") is None

    load.error = None
    assert await cache.get_or_load("product:p1", load, Product) == HOODIE
    assert load.calls == 2


async def test_cache_waiters_survive_the_loading_caller_being_cancelled(
    kv: KeyValueStore,
) -> None:
    """A client that disconnects mid-load must not fail the requests waiting on the same key."""
    cache = Cache(kv, ttl_seconds=30)
    load = Loader(HOODIE, delay=0.05)
    first = asyncio.create_task(cache.get_or_load("product:p1", load, Product))
    await asyncio.sleep(0.01)
    waiters = [
        asyncio.create_task(cache.get_or_load("product:p1", load, Product)) for _ in range(5)
    ]
    await asyncio.sleep(0.01)

    first.cancel()

    assert await asyncio.gather(*waiters) == [HOODIE] * 5
    assert first.cancelled()
    assert load.calls == 2  # one waiter took the load over

    # and a waiter that is itself cancelled is cancelled, not handed the value
    load.delay = 0.05
    await cache.invalidate("product:p1")
    leader = asyncio.create_task(cache.get_or_load("product:p1", load, Product))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(cache.get_or_load("product:p1", load, Product))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await leader == HOODIE
