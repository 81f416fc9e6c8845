"""Inventory in Redis: the gate every order passes, one Lua script per decision.

Keys (all owned by the order service; `{d}` is the drop id, in braces so a drop's keys share a
Redis Cluster slot):

    inv:{d}           hash   stock, available, reserved, sold, limit, starts_ms, ends_ms, closed
    inv:{d}:held      hash   user id -> units reserved + sold (the per-user limit counts these)
    inv:{d}:res       hash   order id -> "user id|quantity" for live reservations
    inv:{d}:done      set    order ids whose unit was committed (sold)
    inv:expiring      zset   "drop|order|user" -> expiry in ms, what the reaper walks

Invariant, kept by every script in one atomic step: available + reserved + sold == stock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, cast

from redis.exceptions import WatchError

from dropsim.batching import Batcher
from dropsim.orders.models import Rejection
from dropsim.ports import KeyValueStore

EXPIRING = "inv:expiring"
_KEPT_BATCHERS = 256
"""Drops whose reservation batcher is kept between rushes (idle ones past this are dropped)."""


def drop_keys(drop_id: str) -> list[str]:
    """The keys of one drop's inventory, in the order every script takes them."""
    base = f"inv:{{{drop_id}}}"
    return [base, f"{base}:held", f"{base}:res", f"{base}:done", EXPIRING]


# Decides a batch of reservations of one drop, one after another, each exactly as if alone.
# KEYS: inv, held, res, done, expiring, then one idempotency record key per reservation
# ARGV: drop id, then 8 values per reservation:
#       fingerprint, order id, user id, quantity, now ms, hold ms, running ttl s, done ttl s
# Returns 3 values per reservation: outcome, then ('reserved', units left, '') /
# ('rejected', reason, '') / ('replay', status, body) / ('in_flight' | 'mismatch' |
# 'unprepared', '', '').
# Checks per reservation, in this order: idempotency record, drop live, per-user limit, stock;
# only then writes. Two reservations with one key in a batch: the second finds the first's claim.
RESERVE = """
local inv, held, res, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local drop = ARGV[1]
local out = {}
local drop_state = redis.call('HMGET', inv, 'closed', 'starts_ms', 'ends_ms', 'available', 'limit')
local prepared = drop_state[1]
local closed = drop_state[1] == '1'
local starts, ends = tonumber(drop_state[2]), tonumber(drop_state[3])
local available, limit = tonumber(drop_state[4]), tonumber(drop_state[5])
local taken = 0

for i = 0, (#ARGV - 1) / 8 - 1 do
  local a = 2 + 8 * i
  local idem = KEYS[6 + i]
  local fp, order_id, user, qty = ARGV[a], ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  local now, hold = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local running_ttl, done_ttl = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])
  local o = 3 * i
  local function answer(outcome, first, second)
    out[o + 1], out[o + 2], out[o + 3] = outcome, first or '', second or ''
  end
  local function refuse(code)
    redis.call('HSET', idem, 'fp', fp, 'state', 'done', 'status', '409', 'body', 'problem:' .. code)
    redis.call('EXPIRE', idem, done_ttl)
    answer('rejected', code)
  end
  local seen = redis.call('HMGET', idem, 'fp', 'state', 'status', 'body')
  if seen[1] then
    if seen[1] ~= fp then answer('mismatch')
    elseif seen[2] == 'running' then answer('in_flight')
    else answer('replay', seen[3], seen[4]) end
  elseif not prepared then
    answer('unprepared')
  elseif closed or now < starts or now >= ends then
    refuse('drop_not_live')
  elseif tonumber(redis.call('HGET', held, user) or '0') + qty > limit then
    refuse('limit_reached')
  elseif available < qty then
    refuse('sold_out')
  else
    available = available - qty
    taken = taken + qty
    redis.call('HINCRBY', held, user, qty)
    redis.call('HSET', res, order_id, user .. '|' .. qty)
    redis.call('ZADD', expiring, now + hold, drop .. '|' .. order_id .. '|' .. user)
    redis.call('HSET', idem, 'fp', fp, 'state', 'running', 'order', order_id)
    redis.call('EXPIRE', idem, running_ttl)
    answer('reserved', tostring(available))
  end
end
if taken > 0 then
  redis.call('HINCRBY', inv, 'available', -taken)
  redis.call('HINCRBY', inv, 'reserved', taken)
end
return out
"""

# KEYS: inv, held, res, done, expiring    ARGV: order id, drop id, user id
# 1 = committed now, 2 = committed before (a repeated callback), 0 = no reservation (released).
COMMIT = """
local inv, res, done, expiring = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local order_id = ARGV[1]
if redis.call('SISMEMBER', done, order_id) == 1 then return 2 end
local entry = redis.call('HGET', res, order_id)
if not entry then return 0 end
local qty = tonumber(string.match(entry, '|(%d+)$'))
redis.call('HINCRBY', inv, 'reserved', -qty)
redis.call('HINCRBY', inv, 'sold', qty)
redis.call('HDEL', res, order_id)
redis.call('SADD', done, order_id)
redis.call('ZREM', expiring, ARGV[2] .. '|' .. order_id .. '|' .. ARGV[3])
return 1
"""

# KEYS: inv, held, res, done, expiring    ARGV: order id, drop id, user id
# Returns {1, available} when this call released the unit, {0, available} when nothing was held:
# a unit goes back exactly once however many failures, timeouts and reapers ask.
RELEASE = """
local inv, held, res, expiring = KEYS[1], KEYS[2], KEYS[3], KEYS[5]
local order_id = ARGV[1]
local entry = redis.call('HGET', res, order_id)
redis.call('ZREM', expiring, ARGV[2] .. '|' .. order_id .. '|' .. ARGV[3])
if not entry then return {0, redis.call('HGET', inv, 'available') or '0'} end
local user, qty = string.match(entry, '^(.*)|(%d+)$')
qty = tonumber(qty)
redis.call('HINCRBY', inv, 'reserved', -qty)
local available = redis.call('HINCRBY', inv, 'available', qty)
if redis.call('HINCRBY', held, user, -qty) <= 0 then redis.call('HDEL', held, user) end
redis.call('HDEL', res, order_id)
return {1, tostring(available)}
"""

# KEYS: inv    ARGV: stock, limit, starts ms, ends ms
# Creates the counters, or re-terms them while nothing has been reserved or sold.
PREPARE = """
local inv = KEYS[1]
if redis.call('EXISTS', inv) == 0 then
  redis.call('HSET', inv, 'stock', ARGV[1], 'available', ARGV[1], 'reserved', 0, 'sold', 0,
             'limit', ARGV[2], 'starts_ms', ARGV[3], 'ends_ms', ARGV[4], 'closed', 0)
  return 1
end
redis.call('HSET', inv, 'limit', ARGV[2], 'starts_ms', ARGV[3], 'ends_ms', ARGV[4])
local counts = redis.call('HMGET', inv, 'reserved', 'sold')
local taken = tonumber(counts[1]) + tonumber(counts[2])
if taken == 0 then
  redis.call('HSET', inv, 'stock', ARGV[1], 'available', ARGV[1])
end
return 0
"""


class Reserved(Enum):
    """Outcomes of the reservation script besides a rejection."""

    RESERVED = "reserved"
    REPLAY = "replay"
    IN_FLIGHT = "in_flight"
    MISMATCH = "mismatch"
    REJECTED = "rejected"
    UNPREPARED = "unprepared"
    """No counters for this drop in Redis (lost or never made): rebuild them from the ledger."""


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the reservation script decided, and what it knows for the caller."""

    outcome: Reserved
    rejection: Rejection | None = None
    available: int | None = None
    stored_status: int | None = None
    stored_body: str | None = None


@dataclass(frozen=True, slots=True)
class Counters:
    stock: int
    available: int
    reserved: int
    sold: int
    limit: int
    closed: bool


def _reservation(outcome: str, first: str, second: str) -> Reservation:
    decided = Reserved(outcome)
    if decided is Reserved.RESERVED:
        return Reservation(decided, available=int(first))
    if decided is Reserved.REJECTED:
        return Reservation(decided, rejection=Rejection(first))
    if decided is Reserved.REPLAY:
        return Reservation(decided, stored_status=int(first), stored_body=second)
    return Reservation(decided)


class Inventory:
    """The order service's Redis keys and the scripts that change them."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv
        self._reservations: dict[str, Batcher[tuple[str, tuple[object, ...]], Reservation]] = {}
        self._reserve = kv.register_script(RESERVE)
        self._commit = kv.register_script(COMMIT)
        self._release = kv.register_script(RELEASE)
        self._prepare = kv.register_script(PREPARE)

    async def prepare(
        self, drop_id: str, *, stock: int, limit: int, starts_ms: int, ends_ms: int
    ) -> bool:
        """Create a drop's counters (True), or update their terms before any sale (False)."""
        created = await self._prepare(
            keys=drop_keys(drop_id)[:1], args=[stock, limit, starts_ms, ends_ms]
        )
        return bool(created)

    async def exists(self, drop_id: str) -> bool:
        return bool(await self._kv.exists(drop_keys(drop_id)[0]))

    async def is_committed(self, drop_id: str, order_id: str) -> bool:
        return bool(await self._kv.sismember(drop_keys(drop_id)[3], order_id))

    async def close(self, drop_id: str) -> None:
        """Stop sales at once (a cancelled drop); reservations settle or lapse as usual."""
        await self._kv.hset(drop_keys(drop_id)[0], "closed", 1)

    async def reserve(
        self,
        *,
        idempotency_key: str,
        fingerprint: str,
        drop_id: str,
        order_id: str,
        user_id: str,
        quantity: int,
        now_ms: int,
        hold_ms: int,
        running_ttl_s: int,
        done_ttl_s: int,
    ) -> Reservation:
        """Claim the key and reserve `quantity` units for `user_id`, all or nothing, atomically.

        Concurrent reservations of one drop share a script call and are decided in the order
        they were asked for, each as if it ran alone."""
        batcher = self._reservations.get(drop_id)
        if batcher is None:
            if len(self._reservations) >= _KEPT_BATCHERS:  # drops come and go: forget idle ones
                self._reservations = {d: b for d, b in self._reservations.items() if b.busy}
            batcher = self._reservations[drop_id] = Batcher(partial(self._reserve_batch, drop_id))
        return await batcher.submit(
            (
                idempotency_key,
                (
                    fingerprint,
                    order_id,
                    user_id,
                    quantity,
                    now_ms,
                    hold_ms,
                    running_ttl_s,
                    done_ttl_s,
                ),
            )
        )

    async def _reserve_batch(
        self, drop_id: str, requests: list[tuple[str, tuple[object, ...]]]
    ) -> list[Reservation]:
        args: list[Any] = [drop_id]
        for _, fields in requests:
            args += fields
        reply: list[str] = await self._reserve(
            keys=[*drop_keys(drop_id), *(key for key, _ in requests)], args=args
        )
        return [_reservation(*reply[at : at + 3]) for at in range(0, len(reply), 3)]

    async def commit(self, drop_id: str, order_id: str, user_id: str) -> int:
        """Turn a reservation into a sale: 1 now, 2 already done, 0 nothing held any more."""
        done: int = await self._commit(keys=drop_keys(drop_id), args=[order_id, drop_id, user_id])
        return int(done)

    async def release(self, drop_id: str, order_id: str, user_id: str) -> tuple[bool, int]:
        """Give a reserved unit back: (released by this call, units available after)."""
        released, available = await self._release(
            keys=drop_keys(drop_id), args=[order_id, drop_id, user_id]
        )
        return bool(int(released)), int(available)

    async def counters(self, drop_id: str) -> Counters | None:
        values = await self._kv.hmget(
            drop_keys(drop_id)[0], ["stock", "available", "reserved", "sold", "limit", "closed"]
        )
        if values[0] is None:
            return None
        stock, available, reserved, sold, limit, closed = (int(value or 0) for value in values)
        return Counters(stock, available, reserved, sold, limit, bool(closed))

    async def holdings(self, drop_id: str) -> dict[str, int]:
        """Units each user holds (reserved + sold) in a drop."""
        held = cast("dict[str, str]", await self._kv.hgetall(drop_keys(drop_id)[1]))
        return {user: int(units) for user, units in held.items()}

    async def reservations(self, drop_id: str) -> dict[str, tuple[str, int]]:
        """Live reservations: order id -> (user id, quantity)."""
        entries = cast("dict[str, str]", await self._kv.hgetall(drop_keys(drop_id)[2]))
        result = {}
        for order_id, entry in entries.items():
            user, quantity = entry.rsplit("|", 1)
            result[order_id] = (user, int(quantity))
        return result

    async def expired(self, now_ms: int, limit: int = 500) -> list[tuple[str, str, str]]:
        """(drop id, order id, user id) of reservations whose hold lapsed before `now_ms`."""
        members = cast(
            "list[str]",
            await self._kv.zrangebyscore(EXPIRING, "-inf", now_ms, start=0, num=limit),
        )
        found = []
        for member in members:
            drop_id, order_id, user_id = member.split("|", 2)
            found.append((drop_id, order_id, user_id))
        return found

    async def rebuild(
        self,
        drop_id: str,
        *,
        stock: int,
        limit: int,
        starts_ms: int,
        ends_ms: int,
        closed: bool,
        confirmed: dict[str, tuple[str, int]],
        reserved: dict[str, tuple[str, int, int]],
        only_if_missing: bool = False,
    ) -> bool:
        """Replace a drop's counters with the ledger's truth, in one MULTI/EXEC; False when
        `only_if_missing` and another process made them first (WATCH keeps that race safe).

        `confirmed` maps order id -> (user, quantity) for confirmed orders; `reserved` maps
        order id -> (user, quantity, expiry ms) for pending orders whose hold has not lapsed.
        """
        inv, held, res, done, expiring = drop_keys(drop_id)
        units_sold = sum(quantity for _, quantity in confirmed.values())
        units_reserved = sum(quantity for _, quantity, _ in reserved.values())
        holding: dict[str, int] = {}
        for user, quantity in confirmed.values():
            holding[user] = holding.get(user, 0) + quantity
        for user, quantity, _ in reserved.values():
            holding[user] = holding.get(user, 0) + quantity
        async with self._kv.pipeline(transaction=True) as pipe:
            if only_if_missing:
                await pipe.watch(inv)
                if await pipe.exists(inv):
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
            pipe.delete(inv, held, res, done)
            pipe.hset(
                inv,
                mapping={
                    "stock": stock,
                    "available": stock - units_sold - units_reserved,
                    "reserved": units_reserved,
                    "sold": units_sold,
                    "limit": limit,
                    "starts_ms": starts_ms,
                    "ends_ms": ends_ms,
                    "closed": int(closed),
                },
            )
            if holding:
                pipe.hset(held, mapping=holding)  # type: ignore[arg-type]
            if confirmed:
                pipe.sadd(done, *confirmed)
            for order_id, (user, quantity, expires_ms) in reserved.items():
                pipe.hset(res, order_id, f"{user}|{quantity}")
                pipe.zadd(expiring, {f"{drop_id}|{order_id}|{user}": expires_ms})
            try:
                await pipe.execute()
            except WatchError:
                return False
        return True
