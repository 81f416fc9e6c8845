"""Correctness under a real rush over HTTP: thousands of concurrent orders for far less stock."""

from __future__ import annotations

from collections import Counter

import pytest

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.rush import buyer_tokens, open_drop, orders_of, rush, rush_client, settled_audit

STOCK = 60
LIMIT = 2
BUYERS = 1_000  # x 2 purchases x 2 clicks = 4,000 requests launched at once


def paying(settings: Settings, **faults: float) -> Settings:
    """Settings with a fast provider (and the given faults)."""
    terms: dict[str, float] = {
        "provider_latency_median_ms": 20,
        "provider_latency_p99_ms": 200,
        "provider_failure_rate": 0.0,
        "provider_duplicate_rate": 0.2,
        "provider_out_of_order_rate": 0.1,
        "payment_timeout_seconds": 20,
        "reservation_hold_seconds": 30,
    }
    return settings.model_copy(update=terms | faults)


@pytest.mark.slow
async def test_rush_sells_exactly_the_stock(backend_settings: Settings) -> None:
    settings = paying(backend_settings)
    with ServerProcess(settings) as server:
        async with rush_client(server.url) as client:
            tokens = await buyer_tokens(client, server.settings, BUYERS)
            drop = await open_drop(client, stock=STOCK, limit=LIMIT)
            seen = await rush(client, drop["id"], tokens, keys_per_buyer=2)
            audit = await settled_audit(client, server.settings, drop["id"])
            per_user = {user: await orders_of(client, token) for user, token in tokens.items()}

    assert audit["ok"], audit
    assert audit["sold"] == audit["confirmed_units_sql"] == STOCK
    assert audit["available"] == 0
    # every key that got a 201 got the same order each time, and it is the user's only one
    assert all(len(ids) == 1 for ids in seen.created.values())
    assert len(seen.created) == STOCK
    assert seen.codes["sold_out"] + seen.codes["limit_reached"] > 0
    mine = Counter(user for user, orders in per_user.items() for _ in orders)
    assert max(mine.values()) <= LIMIT
    assert sum(mine.values()) == STOCK
    assert all(order["status"] == "confirmed" for orders in per_user.values() for order in orders)
    keys = [
        (user, order["idempotency_key"]) for user, orders in per_user.items() for order in orders
    ]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(seen.created)


@pytest.mark.slow
async def test_rush_with_payment_faults_keeps_every_invariant(backend_settings: Settings) -> None:
    """Declines, duplicate, stale and lost callbacks (so timeouts): units go back exactly once and
    a second wave of buyers takes them; nothing is oversold, nothing confirmed is lost."""
    settings = paying(
        backend_settings,
        provider_failure_rate=0.2,
        provider_callback_loss_rate=0.1,
        # long enough that a busy 2-core CI machine does not time out healthy payments too
        payment_timeout_seconds=5,
        reservation_hold_seconds=8,
    )
    with ServerProcess(settings) as server:
        async with rush_client(server.url) as client:
            tokens = await buyer_tokens(client, server.settings, BUYERS)
            drop = await open_drop(client, stock=STOCK, limit=LIMIT)
            await rush(client, drop["id"], tokens, keys_per_buyer=2)
            first = await settled_audit(client, server.settings, drop["id"])
            assert first["ok"], first
            waves = 0
            while first["sold"] < STOCK and waves < 12:
                waves += 1
                latecomers = await buyer_tokens(
                    client, server.settings, 100, prefix=f"usr_wave{waves}_"
                )
                await rush(client, drop["id"], latecomers, keys_per_buyer=1, seed=waves)
                first = await settled_audit(client, server.settings, drop["id"])
                assert first["ok"], first

    assert first["sold"] == first["confirmed_units_sql"] == STOCK
    assert first["orphan_payments"] == []
    assert first["unpaid_confirmed_orders"] == []
