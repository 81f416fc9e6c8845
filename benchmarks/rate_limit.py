"""What the rate limiter costs: read throughput with the limiter on vs off, in the same run.

    python benchmarks/rate_limit.py [--seconds 10] [--connections 64] [--real]

For each backend (embedded; with --real also Redis + PostgreSQL from DROPSIM_TEST_REDIS_URL /
DROPSIM_TEST_POSTGRES_URL) it serves dropsim twice, one process at a time: limiter off, then on
(with budgets no load from one address reaches, so every request pays the check and none is
refused). wrk (Debian package `wrk`, one thread so the server keeps a core) drives:

    hello   GET /health/live        never limited: the ceiling, and a check that runs compare
    drop    GET /v1/drops/{id}      anonymous, cached: the address's budget (one key)
    me      GET /v1/me              signed in, one SQL read: user and address budgets (two keys)

Figures are printed, never asserted: compare the on/off ratio, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from dropsim.settings import Settings
from dropsim.testing import ServerProcess, embedded_settings

LATENCY = re.compile(r"^\s+(50|99)\.000%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
REQUESTS = re.compile(r"Requests/sec:\s+([\d.]+)")
NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, seconds: int, connections: int, headers: dict[str, str]) -> dict[str, float]:
    """req/s, p50 and p99 (ms) and non-2xx count of one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    latency = {int(p): float(v) * UNIT_MS[unit] for p, v, unit in LATENCY.findall(output)}
    requests = REQUESTS.search(output)
    non_2xx = NON_2XX.search(output)
    return {
        "rps": float(requests.group(1)) if requests else 0.0,
        "p50_ms": latency.get(50, 0.0),
        "p99_ms": latency.get(99, 0.0),
        "non_2xx": float(non_2xx.group(1)) if non_2xx else 0.0,
    }


async def prepare(url: str) -> tuple[str, str]:
    """A public drop to read and a signed-in buyer's token."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def sign_up(handle: str) -> str:
            response = await client.post(
                "/v1/auth/signup",
                json={"email": f"{handle}@example.com", "password": "benchmark!", "handle": handle},
            )
            token: str = response.json()["access_token"]
            return token

        creator = await client.post(
            "/v1/creators",
            json={"handle": "bench", "display_name": "Bench"},
            headers={"Authorization": f"Bearer {await sign_up('bench')}"},
        )
        auth = {"Authorization": f"Bearer {creator.json()['access_token']}"}
        product = (await client.post("/v1/products", json={"name": "Tee"}, headers=auth)).json()
        starts = datetime.now(UTC) + timedelta(hours=1)
        drop = await client.post(
            "/v1/drops",
            headers=auth,
            json={
                "product_id": product["id"],
                "stock": 100,
                "price_cents": 2500,
                "per_user_limit": 1,
                "starts_at": starts.isoformat(),
                "ends_at": (starts + timedelta(hours=1)).isoformat(),
            },
        )
        return str(drop.json()["id"]), await sign_up("buyer")


def measure(settings: Settings, seconds: int, connections: int) -> dict[str, dict[str, float]]:
    with ServerProcess(settings) as server:
        drop_id, token = asyncio.run(prepare(server.url))
        return {
            "hello": wrk(f"{server.url}/health/live", seconds, connections, {}),
            "drop": wrk(f"{server.url}/v1/drops/{drop_id}", seconds, connections, {}),
            "me": wrk(
                f"{server.url}/v1/me", seconds, connections, {"Authorization": f"Bearer {token}"}
            ),
        }


def compare(
    name: str, fresh: Callable[[str], Settings], seconds: int, connections: int
) -> list[list[str]]:
    """Rows of one backend: each path with the limiter off, on, and on/off."""
    off = measure(
        fresh("off").model_copy(update={"rate_limit_enabled": False}), seconds, connections
    )
    on = measure(fresh("on"), seconds, connections)
    rows = []
    for path in ("hello", "drop", "me"):
        for label, result in (("off", off[path]), ("on", on[path])):
            ratio = f"{on[path]['rps'] / off[path]['rps']:.0%}" if label == "on" else ""
            rows.append(
                [
                    name,
                    path,
                    label,
                    f"{result['rps']:,.0f}",
                    ratio,
                    f"{result['p50_ms']:.1f}",
                    f"{result['p99_ms']:.1f}",
                    f"{int(result['non_2xx']):,}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--real", action="store_true", help="also run on Redis + PostgreSQL")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    if args.real and not os.environ.get("DROPSIM_TEST_REDIS_URL"):
        sys.exit("--real needs DROPSIM_TEST_REDIS_URL and DROPSIM_TEST_POSTGRES_URL")
    rows = []
    with tempfile.TemporaryDirectory() as directory:

        def embedded(run: str) -> Settings:
            return embedded_settings(Path(directory) / run)

        rows += compare("embedded", embedded, args.seconds, args.connections)
        if args.real:
            from tests.conftest import real_settings

            def real(run: str) -> Settings:
                return real_settings(Path(directory) / f"real-{run}")

            rows += compare("redis+postgres", real, args.seconds, args.connections)
    header = ["backend", "path", "limiter", "req/s", "on/off", "p50 ms", "p99 ms", "non-2xx"]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
