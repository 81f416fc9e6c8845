"""Crash and restart: the embedded server is killed mid-rush (its in-memory counters die with
it), started again on the same files, rebuilds its counters from the SQL ledger, and the audit is
clean with every confirmed order still confirmed."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from dropsim.settings import Settings
from dropsim.testing import ServerProcess, embedded_settings
from tests.rush import buyer_tokens, open_drop, rush, rush_client, settled_audit

STOCK = 300


def shard_files(settings: Settings) -> list[Path]:
    """The SQLite shard files (read straight, as the server's own process writes them)."""
    template = settings.db_url.removeprefix("sqlite:///")
    return [Path(template.replace("{shard}", str(shard))) for shard in range(settings.shards)]


def ledger(settings: Settings, drop_id: str) -> dict[str, str]:
    """order id -> status."""
    statuses: dict[str, str] = {}
    for path in shard_files(settings):
        with sqlite3.connect(path) as connection:
            statuses.update(
                connection.execute(
                    "SELECT id, status FROM orders WHERE drop_id = ?", (drop_id,)
                ).fetchall()
            )
    return statuses


@pytest.mark.slow
def open_payments(settings: Settings, drop_id: str, created_before: float) -> list[str]:
    """Ids of the drop's payments still requested or pending that were made before a time."""
    found: list[str] = []
    for path in shard_files(settings):
        with sqlite3.connect(path) as connection:
            found += [
                row[0]
                for row in connection.execute(
                    "SELECT id FROM payments WHERE drop_id = ? AND created_at < ? "
                    "AND status IN ('requested', 'pending')",
                    (drop_id, created_before),
                )
            ]
    return found


async def test_killed_mid_rush_comes_back_consistent(tmp_path: Path) -> None:
    settings = embedded_settings(
        tmp_path,
        # slow enough that charges are in flight when the server dies
        provider_latency_median_ms=200,
        provider_latency_p99_ms=3000,
        provider_failure_rate=0.1,
        payment_timeout_seconds=8,
        reservation_hold_seconds=10,
    )
    first = ServerProcess(settings).start()
    try:
        async with rush_client(first.url) as client:
            early = await buyer_tokens(client, first.settings, 100, prefix="usr_early")
            crowd = await buyer_tokens(client, first.settings, 1_000)
            drop = await open_drop(client, stock=STOCK, limit=2)
            await rush(client, drop["id"], early, keys_per_buyer=1)
            # the ledger is a file another process writes: nothing to await but its contents
            while not any(  # noqa: ASYNC110
                status == "confirmed" for status in ledger(settings, drop["id"]).values()
            ):
                await asyncio.sleep(0.05)
            rushing = asyncio.create_task(
                rush(client, drop["id"], crowd, keys_per_buyer=2, server_may_die=True)
            )
            await asyncio.sleep(0.5)
            assert not rushing.done(), "the rush ended before the crash"
            first.kill()  # SIGKILL: no shutdown, fakeredis (counters, reservations) is gone
            crashed_at = time.time()
            seen = await rushing
    finally:
        first.stop()
    before = ledger(settings, drop["id"])
    confirmed_before = {order for order, status in before.items() if status == "confirmed"}
    assert confirmed_before
    assert seen.codes["connection_lost"] > 0, "the rush ended before the crash"
    abandoned = open_payments(settings, drop["id"], crashed_at)
    assert abandoned, "no payment was in flight at the crash"

    with ServerProcess(settings) as second:
        async with rush_client(second.url) as client:
            audit = await settled_audit(client, second.settings, drop["id"])
            assert audit["ok"], audit
            after = ledger(settings, drop["id"])
            assert all(after[order] == "confirmed" for order in confirmed_before)
            assert audit["sold"] == sum(1 for status in after.values() if status == "confirmed")
            assert audit["sold"] <= STOCK

            # the units that came back are on sale again, and sell exactly to the stock
            for wave in range(1, 9):
                if audit["sold"] == STOCK:
                    break
                latecomers = await buyer_tokens(
                    client, second.settings, 150, prefix=f"usr_after{wave}_"
                )
                await rush(
                    client, drop["id"], latecomers, keys_per_buyer=1, clicks_per_key=1, seed=wave
                )
                audit = await settled_audit(client, second.settings, drop["id"])
                assert audit["ok"], audit

            # what the dead process was still charging is concluded by the new one's recovery
            deadline = time.monotonic() + 60
            while left := open_payments(settings, drop["id"], crashed_at):
                assert time.monotonic() < deadline, f"{len(left)} of {len(abandoned)} still open"
                await asyncio.sleep(0.5)
    assert audit["sold"] == STOCK
