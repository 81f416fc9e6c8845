"""GCRA (generic cell rate algorithm) over several keys in one Lua call: a request passes only if
every key allows it, and a refused request charges none of them.

Each key holds one number, its theoretical arrival time (TAT, microseconds since the epoch). With
emission interval T and burst B, a request at `now` is allowed when `max(TAT, now) + T - now`
(the debt it would leave) is at most `B * T`; it then stores that new TAT with an expiry at the
moment the debt is paid, so an idle key costs no memory. A fresh key admits exactly B requests at
once, then one per T. The state lives only in the KV store, so every server process shares it.

The script takes a batch of requests and decides them one after another: a process sends the
checks that arrive together in one call (see `RateGate`), so a request costs one round trip at
most, and under load a fraction of one. (A call's keys must live on one Redis node: no Redis
Cluster without hash tags that put them together.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dropsim.batching import Batcher
from dropsim.gateway.limits import Limit
from dropsim.ports import KeyValueStore

# One call decides a batch of requests, in order, each atomically against its own keys.
# KEYS: the batch's distinct keys
# ARGV: now in us ('' = the KV server's clock), then per request: its key count n, then n
#       triples (key's position in KEYS, T us, B)
# Returns one string of numbers: per request allowed (1/0), then per key: remaining, debt us
# (time to full), wait us. One string, not an array: replies cost per element in redis-py and
# far more in fakeredis, which converts each one from Lua.
# Each key is read once (MGET) and written once (SET ... PX), however many requests share it.
# Numbers go to Redis as '%d' strings: Lua 5.1 would print 16-digit times as 1.7e+15.
GCRA = """
local now = tonumber(ARGV[1])
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local unpack = unpack or table.unpack
local stored = redis.call('MGET', unpack(KEYS))
local tats, charged = {}, {}
for i = 1, #KEYS do tats[i] = tonumber(stored[i]) or 0 end
local result = {}
local a = 2
while a <= #ARGV do
  local count = tonumber(ARGV[a])
  a = a + 1
  local base = #result
  local allowed = 1
  for i = 0, count - 1 do
    local at = a + 3 * i
    local key, interval, burst = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
    local debt = tats[key] - now
    if debt < 0 then debt = 0 end
    local wait = debt + interval - burst * interval
    if wait > 0 then allowed = 0 else wait = 0 end
    result[base + 2 + 3 * i] = math.floor((burst * interval - debt) / interval)
    result[base + 3 + 3 * i] = debt
    result[base + 4 + 3 * i] = wait
  end
  if allowed == 1 then
    for i = 0, count - 1 do
      local key = tonumber(ARGV[a + 3 * i])
      local debt = result[base + 3 + 3 * i] + tonumber(ARGV[a + 3 * i + 1])
      tats[key] = now + debt
      charged[key] = true
      result[base + 2 + 3 * i] = result[base + 2 + 3 * i] - 1
      result[base + 3 + 3 * i] = debt
    end
  end
  result[base + 1] = allowed
  a = a + 3 * count
end
for key = 1, #KEYS do
  if charged[key] then
    redis.call('SET', KEYS[key], string.format('%d', tats[key]),
               'PX', string.format('%d', math.floor((tats[key] - now + 999) / 1000)))
  end
end
return table.concat(result, ' ')
"""

Budgets = Sequence[tuple[str, Limit]]
"""One request's budgets: (key, limit) pairs that must all allow it."""


@dataclass(frozen=True, slots=True)
class Budget:
    """One key's state after a decision."""

    remaining: int
    """Requests it would still allow right now."""
    reset_us: int
    """Microseconds until it is full again (B requests at once)."""
    wait_us: int
    """Microseconds until it allows one more request (0 when it allowed this one)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What the script decided for one request, and every key's state after it."""

    allowed: bool
    budgets: tuple[Budget, ...]

    @property
    def retry_after_us(self) -> int:
        """Microseconds until every key allows a request again (0 when allowed)."""
        return max(budget.wait_us for budget in self.budgets)


class RateGate:
    """Checks and charges GCRA budgets atomically; concurrent requests share one script call.

    While one call is in flight, the requests that arrive gather and go together in the next
    (as group commit does for SQL): under a rush a call carries many decisions, under a
    trickle each goes alone at once. Each decision stays atomic and exact; only the client's
    per-call cost (a redis-py round trip, or fakeredis compiling the script) is shared.
    """

    def __init__(self, kv: KeyValueStore, *, max_batch: int = 256) -> None:
        self._script = kv.register_script(GCRA)
        self._checks: Batcher[Budgets, Decision] = Batcher(self.decide, max_batch=max_batch)

    async def check(self, budgets: Budgets) -> Decision:
        """Charge one request to every `(key, limit)` if all allow it, else to none, on the KV
        server's clock (which every server process shares)."""
        return await self._checks.submit(budgets)

    async def decide(
        self, requests: Sequence[Budgets], *, now_us: int | None = None
    ) -> list[Decision]:
        """Decide `requests` in order in one script call; `now_us` (tests) replaces the server's
        clock."""
        positions: dict[str, int] = {}
        args: list[Any] = ["" if now_us is None else now_us]
        for budgets in requests:
            args.append(len(budgets))
            for key, limit in budgets:
                position = positions.setdefault(key, len(positions) + 1)
                args += (position, limit.interval_us, limit.burst)
        keys = list(positions)
        reply = [int(number) for number in (await self._script(keys=keys, args=args)).split()]
        decisions = []
        at = 0
        for budgets in requests:
            end = at + 1 + 3 * len(budgets)
            decisions.append(
                Decision(
                    allowed=reply[at] == 1,
                    budgets=tuple(
                        Budget(
                            remaining=max(0, reply[index]),
                            reset_us=reply[index + 1],
                            wait_us=reply[index + 2],
                        )
                        for index in range(at + 1, end, 3)
                    ),
                )
            )
            at = end
        return decisions
