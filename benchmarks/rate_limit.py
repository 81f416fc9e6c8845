"""What the rate limiter costs: read throughput with the limiter on vs off, in the same run.

    python benchmarks/rate_limit.py [--seconds 10] [--connections 64] [--rounds 3] [--real]

For each backend (embedded; with --real also Redis + PostgreSQL from DROPSIM_TEST_REDIS_URL /
DROPSIM_TEST_POSTGRES_URL) it serves dropsim with the limiter off, then on, one process at a
time, for `--rounds` rounds, and prints the median of each (on: budgets no load from one address
reaches, so every request pays the check and none is refused). wrk (Debian package `wrk`, one
thread so the server keeps a core) drives:

    hello   GET /health/live        never limited: the ceiling, and a check that runs compare
    drop    GET /v1/drops/{id}      anonymous, cached: the address's budget (one key)
    me      GET /v1/me              signed in, one SQL read: user and address budgets (two keys)

Besides req/s (which other load on the machine sways), it prints the server process's CPU time
per request (user + system, from /proc), which contention moves much less: the limiter's cost
is the difference between on and off. Figures are printed, never asserted.
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

LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
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
        targets = {
            "hello": (f"{server.url}/health/live", {}),
            "drop": (f"{server.url}/v1/drops/{drop_id}", {}),
            "me": (f"{server.url}/v1/me", {"Authorization": f"Bearer {token}"}),
        }
        results = {}
        for path, (url, headers) in targets.items():
            used = server.cpu_seconds()
            result = wrk(url, seconds, connections, headers)
            requests = result["rps"] * seconds
            result["cpu_us"] = (server.cpu_seconds() - used) / max(requests, 1) * 1e6
            results[path] = result
        return results


def median_run(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per path, the run with the median req/s."""
    return {
        path: sorted((run[path] for run in runs), key=lambda result: result["rps"])[len(runs) // 2]
        for path in runs[0]
    }


def compare(
    name: str, fresh: Callable[[str], Settings], seconds: int, connections: int, rounds: int
) -> list[list[str]]:
    """Rows of one backend: each path with the limiter off, on, and on/off (medians)."""
    offs, ons = [], []
    for round_ in range(rounds):
        disabled = fresh(f"off{round_}").model_copy(update={"rate_limit_enabled": False})
        offs.append(measure(disabled, seconds, connections))
        ons.append(measure(fresh(f"on{round_}"), seconds, connections))
    off, on = median_run(offs), median_run(ons)
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
                    f"{result['cpu_us']:.0f}",
                    f"{int(result['non_2xx']):,}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on runs")
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

        rows += compare("embedded", embedded, args.seconds, args.connections, args.rounds)
        if args.real:
            from tests.conftest import real_settings

            def real(run: str) -> Settings:
                return real_settings(Path(directory) / f"real-{run}")

            rows += compare("redis+postgres", real, args.seconds, args.connections, args.rounds)
    header = [
        "backend",
        "path",
        "limiter",
        "req/s",
        "on/off",
        "p50 ms",
        "p99 ms",
        "cpu us/req",
        "non-2xx",
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
