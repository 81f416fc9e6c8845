"""GCRA (generic cell rate algorithm) over several keys in one Lua call: a request passes only if
every key allows it, and a refused request charges none of them.

Each key holds one number, its theoretical arrival time (TAT, microseconds since the epoch). With
emission interval T and burst B, a request at `now` is allowed when `max(TAT, now) + T - now`
(the debt it would leave) is at most `B * T`; it then stores that new TAT with an expiry at the
moment the debt is paid, so an idle key costs no memory. A fresh key admits exactly B requests at
once, then one per T. The state lives only in the KV store, so every server process shares it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dropsim.gateway.limits import Limit
from dropsim.ports import KeyValueStore

# KEYS: one per budget    ARGV: now in us ('' = the KV server's clock), then per key: T us, B
# Returns {allowed, then per key: remaining, debt us (time to refill completely), wait us}.
# Numbers go back to Redis as '%d' strings: Lua 5.1 would print 16-digit times as 1.7e+15.
GCRA = """
local now = tonumber(ARGV[1])
if not now then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local allowed = 1
local debts = {}
local result = {0}
for i = 1, #KEYS do
  local interval, burst = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local debt = tat - now
  local wait = debt + interval - burst * interval
  if wait > 0 then allowed = 0 else wait = 0 end
  debts[i] = debt
  result[3 * i - 1] = math.floor((burst * interval - debt) / interval)
  result[3 * i] = debt
  result[3 * i + 1] = wait
end
if allowed == 1 then
  for i = 1, #KEYS do
    local interval = tonumber(ARGV[2 * i])
    local debt = debts[i] + interval
    redis.call('SET', KEYS[i], string.format('%d', now + debt),
               'PX', string.format('%d', math.floor((debt + 999) / 1000)))
    result[3 * i - 1] = result[3 * i - 1] - 1
    result[3 * i] = debt
  end
end
result[1] = allowed
return result
"""


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
    """Checks and charges several GCRA budgets atomically with one script call."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._script = kv.register_script(GCRA)

    async def check(
        self, budgets: Sequence[tuple[str, Limit]], *, now_us: int | None = None
    ) -> Decision:
        """Charge one request to every `(key, limit)` if all allow it, else to none.

        `now_us` defaults to the KV server's clock, which every server process shares; tests
        pass their own to step through time.
        """
        keys: list[str] = []
        args: list[Any] = ["" if now_us is None else now_us]
        for key, limit in budgets:
            keys.append(key)
            args.append(limit.interval_us)
            args.append(limit.burst)
        reply: list[Any] = await self._script(keys=keys, args=args)
        return Decision(
            allowed=int(reply[0]) == 1,
            budgets=tuple(
                Budget(
                    remaining=max(0, int(reply[index])),
                    reset_us=int(reply[index + 1]),
                    wait_us=int(reply[index + 2]),
                )
                for index in range(1, len(reply), 3)
            ),
        )
