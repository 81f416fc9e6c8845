"""Property-based tests of the reservation scripts: whatever the interleaving of reserve, commit,
release and expiry (including bursts of concurrent reserves), the ledger balances and no user
goes over the limit, on fakeredis and on real Redis."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from dropsim.backends import open_kv
from dropsim.orders.inventory import Inventory, Reserved
from tests.conftest import REDIS_ENV, real_url, reset_redis

DROP = "drp_prop"
USERS = [f"usr_{index}" for index in range(5)]
HOLD_MS = 1_000
START_MS = 1_000_000


def machine_for(kv_url: str) -> type[RuleBasedStateMachine]:
    class InventoryMachine(RuleBasedStateMachine):
        """Redis (through the scripts) against a plain Python model of the same drop."""

        reservations = Bundle("reservations")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            if not kv_url.startswith("memory"):
                reset_redis(kv_url)
            self.kv: Any = self.run(open_kv(kv_url))
            self.inventory = Inventory(self.kv)
            self.now = START_MS
            self.counter = 0
            self.stock = 0
            self.limit = 0
            self.held: dict[str, int] = {}
            self.live: dict[str, tuple[str, int, int]] = {}  # order -> user, qty, expires
            self.sold = 0

        def run(self, work: Any) -> Any:
            return self.loop.run_until_complete(work)

        def teardown(self) -> None:
            self.run(self.kv.aclose())
            self.loop.close()

        @initialize(stock=st.integers(1, 12), limit=st.integers(1, 4))
        def prepare(self, stock: int, limit: int) -> None:
            self.stock, self.limit = stock, limit
            self.run(
                self.inventory.prepare(
                    DROP, stock=stock, limit=limit, starts_ms=START_MS, ends_ms=START_MS + 10**9
                )
            )

        def _reserve(self, user: str, quantity: int) -> Any:
            self.counter += 1
            order_id = f"ord_{self.counter}"
            return order_id, self.inventory.reserve(
                idempotency_key=f"idem:{user}:{order_id}",
                fingerprint="fp",
                drop_id=DROP,
                order_id=order_id,
                user_id=user,
                quantity=quantity,
                now_ms=self.now,
                hold_ms=HOLD_MS,
                running_ttl_s=60,
                done_ttl_s=3600,
            )

        def _apply(self, order_id: str, user: str, quantity: int, outcome: Any) -> str | None:
            held = self.held.get(user, 0)
            available = self.stock - self.sold - sum(q for _, q, _ in self.live.values())
            if outcome.outcome is Reserved.RESERVED:
                assert held + quantity <= self.limit
                assert quantity <= available
                self.held[user] = held + quantity
                self.live[order_id] = (user, quantity, self.now + HOLD_MS)
                assert outcome.available == available - quantity
                return order_id
            assert outcome.outcome is Reserved.REJECTED
            # the script refuses only for a reason that is true (limit is checked before stock)
            if outcome.rejection.value == "limit_reached":
                assert held + quantity > self.limit
            else:
                assert outcome.rejection.value == "sold_out"
                assert held + quantity <= self.limit
                assert quantity > available
            return None

        @rule(target=reservations, user=st.sampled_from(USERS), quantity=st.integers(1, 3))
        def reserve(self, user: str, quantity: int) -> Any:
            order_id, call = self._reserve(user, quantity)
            made = self._apply(order_id, user, quantity, self.run(call))
            return made if made is not None else consumes_nothing()

        @rule(
            burst=st.lists(
                st.tuples(st.sampled_from(USERS), st.integers(1, 2)), min_size=2, max_size=12
            )
        )
        def concurrent_reserves(self, burst: list[tuple[str, int]]) -> None:
            """Many reserves in flight at once share script calls: each is decided exactly as
            the same reserves made one after another, in the order they were asked for."""
            calls = [self._reserve(user, quantity) for user, quantity in burst]

            async def together() -> list[Any]:
                return list(await asyncio.gather(*(call for _, call in calls)))

            results = self.run(together())
            for (order_id, _), (user, quantity), outcome in zip(calls, burst, results, strict=True):
                self._apply(order_id, user, quantity, outcome)

        @rule(user=st.sampled_from(USERS), copies=st.integers(2, 4))
        def double_click(self, user: str, copies: int) -> None:
            """The same key sent several times at once: one reservation, the rest in flight."""
            self.counter += 1
            key = f"idem:{user}:click{self.counter}"

            def attempt(index: int) -> Any:
                return self.inventory.reserve(
                    idempotency_key=key,
                    fingerprint="fp",
                    drop_id=DROP,
                    order_id=f"ord_click{self.counter}_{index}",
                    user_id=user,
                    quantity=1,
                    now_ms=self.now,
                    hold_ms=HOLD_MS,
                    running_ttl_s=60,
                    done_ttl_s=3600,
                )

            async def together() -> list[Any]:
                return list(await asyncio.gather(*(attempt(i) for i in range(copies))))

            first, *rest = self.run(together())
            self._apply(f"ord_click{self.counter}_0", user, 1, first)
            expected = Reserved.IN_FLIGHT if first.outcome is Reserved.RESERVED else Reserved.REPLAY
            assert [outcome.outcome for outcome in rest] == [expected] * len(rest)

        @rule(order_id=consumes(reservations))
        def commit(self, order_id: str) -> None:
            if not order_id:
                return
            user, quantity, _ = self.live.get(order_id, ("", 0, 0))
            done = self.run(self.inventory.commit(DROP, order_id, user or "x"))
            if order_id in self.live:
                assert done == 1
                del self.live[order_id]
                self.sold += quantity
            else:
                assert done == 0  # lapsed and released before the payment came

        @rule(order_id=consumes(reservations), repeats=st.integers(1, 3))
        def release(self, order_id: str, repeats: int) -> None:
            if not order_id:
                return
            user = self.live.get(order_id, ("x", 0, 0))[0]
            outcomes = [
                self.run(self.inventory.release(DROP, order_id, user))[0] for _ in range(repeats)
            ]
            if order_id in self.live:
                _, quantity, _ = self.live.pop(order_id)
                self.held[user] -= quantity
                assert outcomes == [True] + [False] * (repeats - 1)  # exactly once
            else:
                assert not any(outcomes)

        @rule(step=st.integers(100, 1_500))
        def time_passes_and_reaper_runs(self, step: int) -> None:
            self.now += step
            for _, order_id, user in self.run(self.inventory.expired(self.now)):
                released, _ = self.run(self.inventory.release(DROP, order_id, user))
                expected = self.live.pop(order_id, None)
                assert released == (expected is not None)
                if expected is not None:
                    self.held[user] -= expected[1]
            assert all(expires > self.now for _, _, expires in self.live.values())

        @invariant()
        def ledger_balances(self) -> None:
            counters = self.run(self.inventory.counters(DROP))
            if counters is None:
                return
            assert counters.available + counters.reserved + counters.sold == counters.stock
            assert min(counters.available, counters.reserved, counters.sold) >= 0
            assert counters.sold == self.sold
            assert counters.reserved == sum(q for _, q, _ in self.live.values())

        @invariant()
        def nobody_over_the_limit(self) -> None:
            if not self.limit:
                return
            holdings = self.run(self.inventory.holdings(DROP))
            assert all(units <= self.limit for units in holdings.values())
            assert holdings == {user: units for user, units in self.held.items() if units}

    return InventoryMachine


def consumes_nothing() -> str:
    """A bundle value for a refused reservation (rules that consume it do nothing)."""
    return ""


PROFILE = settings(
    max_examples=int(os.environ.get("DROPSIM_HYPOTHESIS_EXAMPLES", "60")),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_reservation_scripts_on_fakeredis() -> None:
    machine = machine_for("memory://")
    machine.TestCase.settings = PROFILE
    machine.TestCase().runTest()


@pytest.mark.redis
def test_reservation_scripts_on_real_redis() -> None:
    machine = machine_for(real_url(REDIS_ENV, "Redis"))
    machine.TestCase.settings = PROFILE
    machine.TestCase().runTest()


async def test_idle_reservation_batchers_of_past_drops_are_forgotten() -> None:
    kv: Any = await open_kv("memory://")
    inventory = Inventory(kv)
    for n in range(300):
        await inventory.reserve(
            idempotency_key=f"idem:u:{n}",
            fingerprint="fp",
            drop_id=f"drp_{n}",
            order_id=f"ord_{n}",
            user_id="u",
            quantity=1,
            now_ms=START_MS,
            hold_ms=HOLD_MS,
            running_ttl_s=60,
            done_ttl_s=3600,
        )
    assert len(inventory._reservations) <= 256
    await kv.aclose()
