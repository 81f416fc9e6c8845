"""`dropsim serve --workers N`: one system behind one port on shared backends, `/metrics` summed
across the workers, and a clear refusal on embedded backends (each process would hold its own).
(The drop clock moving each drop once across processes is tests/test_drop_clock.py's.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from dropsim.app import PROCESS_HEADER
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer
from tests.rush import (
    buyer_tokens,
    fast_provider,
    open_drop,
    orders_of,
    rush_client,
    settled_audit,
)
from tests.scrape import Samples, scrape_text, value

BUYERS = 60
STOCK = 80


def serve_command(*flags: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {key: val for key, val in os.environ.items() if not key.startswith("DROPSIM_")}
    return subprocess.run(
        [sys.executable, "-m", "dropsim.cli", "serve", "--data-dir", str(data_dir), *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ((), ("memory://", "SQLite")),
        (("--kv-url", "redis://127.0.0.1:6379/12"), ("SQLite",)),
    ],
    ids=["fakeredis and sqlite", "sqlite"],
)
def test_several_workers_on_embedded_backends_are_refused(
    tmp_path: Path, flags: tuple[str, ...], named: tuple[str, ...]
) -> None:
    result = serve_command("--workers", "2", *flags, data_dir=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # whatever the terminal width wrapped
    assert "--workers 2 needs backends that every worker shares" in message
    for what in named:
        assert what in message
    assert "serve with --workers 1" in message
    assert "serving on" not in result.stdout


async def test_two_workers_serve_one_system_and_metrics_add_up(
    real_backend_settings: Settings, tmp_path: Path
) -> None:
    scratch = tmp_path / "tmp"  # where `dropsim serve` makes its metrics directory
    scratch.mkdir()
    settings = fast_provider(real_backend_settings)
    server = ServerProcess(settings, workers=2, via_cli=True, env={"TMPDIR": str(scratch)})
    with server:
        assert [path.name[:16] for path in scratch.iterdir()] == ["dropsim-metrics-"]
        async with rush_client(server.url) as client:
            tokens = await buyer_tokens(client, server.settings, BUYERS)
            drop = await open_drop(client, stock=STOCK, limit=1)
            served_by = await place_orders(server.url, drop["id"], list(tokens.values()))
            audit = await settled_audit(client, server.settings, drop["id"])
            statuses: Counter[str] = Counter()
            for token in tokens.values():
                statuses.update(order["status"] for order in await orders_of(client, token))
            scrapes = await scrape_every_worker(server.url)

    assert len(served_by) == 2, f"one worker served every order: {served_by}"
    assert sum(served_by.values()) == BUYERS
    assert statuses == {"confirmed": BUYERS}
    assert audit["sold"] == BUYERS
    assert set(scrapes) == set(served_by)  # each worker answered /metrics
    for pid, samples in scrapes.items():
        orders = "dropsim_orders_total"
        assert value(samples, orders, outcome="reserved") == BUYERS, pid
        assert value(samples, orders, outcome="confirmed") == BUYERS, pid
        assert value(samples, "dropsim_events_published_total", type="drop.went_live") == 1
        assert value(samples, "dropsim_stock_available", drop_id=drop["id"]) == STOCK - BUYERS
        assert value(samples, "dropsim_reservations_live", drop_id=drop["id"]) == 0
    assert list(scratch.iterdir()) == []  # the metrics directory went with the server


async def place_orders(url: str, drop_id: str, tokens: list[str]) -> Counter[str]:
    """Every buyer orders one unit at once, each on a new connection (so both workers accept
    some); return how many orders each worker process created."""
    served_by: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(force_close=True, limit=BUYERS)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def order(token: str) -> None:
            async with session.post(
                f"/v1/drops/{drop_id}/orders",
                json={"quantity": 1},
                headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
            ) as response:
                assert response.status == 201, await response.text()
                served_by[response.headers[PROCESS_HEADER]] += 1

        await asyncio.gather(*(order(token) for token in tokens))
    return served_by


async def scrape_every_worker(url: str, attempts: int = 200) -> dict[str, Samples]:
    """`/metrics` as each worker answers it (new connections until both have answered, once the
    live-drop gauges have been refreshed after the last order)."""
    await asyncio.sleep(1.5)  # the gauges refresh every second in each worker
    found: dict[str, Samples] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(url, connector=connector) as session:
        for _ in range(attempts):
            async with session.get("/metrics") as response:
                assert response.status == 200
                found[response.headers[PROCESS_HEADER]] = scrape_text(await response.text())
            if len(found) == 2:
                return found
    return found
