"""Order-path throughput over HTTP, as ratios against a hello-world route measured in the same run.

    python benchmarks/order_path.py [--seconds 6] [--rounds 3] [--connections 64] [--real]

Starts one dropsim server process per configuration and drives it with wrk (Debian package
`wrk`) from another process, one wrk thread so the server keeps a core. The configurations:
embedded; with --real (Redis + PostgreSQL from DROPSIM_TEST_REDIS_URL / DROPSIM_TEST_POSTGRES_URL)
also the server charging its own orders, the server handing them to one payment worker process
on the same machine (`--payment-workers 1`), and the server queueing them for a worker that
runs elsewhere (none runs here: what the server alone spends on an order). Paths:

    hello      GET /health/live              the ceiling for any route in this app
    order      POST /v1/drops/{id}/orders    fresh key per request, stock never runs out
    sold out   POST /v1/drops/{id}/orders    fresh keys on a sold-out drop

Each path is first warmed up (3 s, not measured: connection pools fill, tokens are verified
once), then the three are measured in turn, `--rounds` times over, and each figure is the
median of its rounds. Before each run the server is left to go idle, and a run's CPU is
counted until it is idle again: what a run leaves behind (payment hand-offs still going out)
is its own, not the next run's. The simulated provider runs in its own process, as an external one
would, and never calls back (the payment timeout is longer than the run): the figures are the
order path including its payment hand-off (one HTTP call to the provider per order), without
settlement. Figures are printed, never asserted: these machines are noisy, so compare the
ratios, not the absolute numbers. The server's CPU per request (all its threads) is the
steadier figure: its ratio to hello's says what throughput the path would reach were the
server alone on a core. A payment worker's CPU is shown apart, per order of the run, with the
hand-offs still queued when the run ended and how long everything took to go idle after it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.payments.handoff import STREAM as HANDOFF_STREAM
from dropsim.payments.worker import start_payment_workers, stop_payment_workers
from dropsim.serving import start_provider_process
from dropsim.settings import Settings
from dropsim.testing import ServerProcess, embedded_settings

BUYERS = 2_000
WARM_UP_SECONDS = 3

DONE = """
done = function(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, "non_2xx": %d, '
    .. '"errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(99) / 1e3, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""

ORDER_REQUEST = """
local tokens = {TOKENS}
local path = "PATH"
local counter = 0
local prefix = "RUN_PREFIX"
request = function()
  counter = counter + 1
  local token = tokens[(counter % #tokens) + 1]
  return wrk.format("POST", path, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = prefix .. "-" .. counter,
  }, '{"quantity": 1}')
end
"""


def order_script(tokens: list[str], path: str) -> str:
    quoted = ",".join(f'"{token}"' for token in tokens)
    return ORDER_REQUEST.replace("TOKENS", quoted).replace("PATH", path) + DONE


def wrk(url: str, script: str, seconds: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        # fresh Idempotency-Keys in every run (Lua's unseeded math.random repeats across runs)
        handle.write(script.replace("RUN_PREFIX", uuid.uuid4().hex))
    try:
        output = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "10s",
                "-s",
                handle.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(handle.name)
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    result: dict[str, float] = json.loads(line.removeprefix("RESULT "))
    result["rps"] = result["requests"] / result["seconds"]
    return result


async def prepare(url: str, settings: Settings) -> tuple[list[str], str, str]:
    """Buyer tokens, a drop that never runs out, and a sold-out drop."""
    admin = TokenIssuer(settings.signing_secret(), 3600).issue("bench-admin", Role.ADMIN)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        signup = await client.post(
            "/v1/auth/signup",
            json={
                "email": "bench-creator@example.com",
                "password": "benchmark!",
                "handle": "bench",
            },
        )
        creator = await client.post(
            "/v1/creators",
            json={"handle": "bench", "display_name": "Bench"},
            headers={"Authorization": f"Bearer {signup.json()['access_token']}"},
        )
        auth = {"Authorization": f"Bearer {creator.json()['access_token']}"}
        product = (await client.post("/v1/products", json={"name": "Tee"}, headers=auth)).json()
        starts = datetime.now(UTC) + timedelta(seconds=1)
        drops = []
        for stock in (10_000_000, 1):
            drop = await client.post(
                "/v1/drops",
                headers=auth,
                json={
                    "product_id": product["id"],
                    "stock": stock,
                    "price_cents": 2500,
                    "per_user_limit": 1000,
                    "starts_at": starts.isoformat(),
                    "ends_at": (starts + timedelta(hours=1)).isoformat(),
                },
            )
            drops.append(drop.json()["id"])
        minted = await client.post(
            "/v1/admin/tokens",
            headers={"Authorization": f"Bearer {admin}"},
            json={"user_ids": [f"usr_buyer{i}" for i in range(BUYERS)]},
        )
        tokens = list(minted.json()["tokens"].values())
        await asyncio.sleep(1.2)
        sold = await client.post(
            f"/v1/drops/{drops[1]}/orders",
            json={"quantity": 1},
            headers={"Authorization": f"Bearer {tokens[0]}", "Idempotency-Key": "sell-it-out"},
        )
        assert sold.status_code == 201, sold.text
    return tokens, drops[0], drops[1]


def cpu_seconds(processes: list[psutil.Process]) -> list[float]:
    """User + system CPU each process (all its threads) has used so far."""
    return [sum(process.cpu_times()[:2]) for process in processes]


def settled(
    processes: list[psutil.Process], *, busy: float = 0.05, longest: float = 60.0
) -> list[float]:
    """Each process's CPU seconds once all have gone idle (each below `busy` of a core over
    a quarter of a second), so that no run pays for work the previous one left behind."""
    deadline = time.monotonic() + longest
    used = cpu_seconds(processes)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = cpu_seconds(processes)
        if all(after - before < busy * 0.25 for before, after in zip(used, now, strict=True)):
            return now
        used = now
    return used


def handoff_backlog(settings: Settings) -> int:
    """Payment hand-offs queued and not yet recorded by a worker."""
    client = redis.Redis.from_url(settings.kv_url)
    try:
        return int(client.xlen(HANDOFF_STREAM))
    finally:
        client.close()


def run_backend(
    name: str,
    settings: Settings,
    seconds: int,
    connections: int,
    rounds: int,
    *,
    start_workers: bool = True,
) -> list[list[str]]:
    """The three paths on one server; with `settings.payment_workers`, the payment workers
    are started beside it unless `start_workers` is False (orders are then only queued)."""
    rows = []
    # the provider is external, as a real one is: its own process
    provider, provider_url = start_provider_process(settings)
    settings = settings.model_copy(update={"payment_provider_url": provider_url})
    try:
        workers = settings.payment_workers if start_workers else 0
        rows = _measure(name, settings, workers, seconds, connections, rounds)
    finally:
        provider.terminate()
        provider.wait(timeout=10)
    return rows


def _measure(
    name: str, settings: Settings, workers_wanted: int, seconds: int, connections: int, rounds: int
) -> list[list[str]]:
    rows = []
    with ServerProcess(settings) as server:
        # payment workers, when the settings ask for them, beside the server (as `dropsim
        # serve --payment-workers N` starts them) and measured on their own
        workers = start_payment_workers(server.settings, workers_wanted)
        try:
            rows = _measure_server(name, server, workers, seconds, connections, rounds)
        finally:
            stop_payment_workers(workers)
    return rows


def _measure_server(
    name: str,
    server: ServerProcess,
    workers: list[subprocess.Popen[bytes]],
    seconds: int,
    connections: int,
    rounds: int,
) -> list[list[str]]:
    rows = []
    settings = server.settings
    processes = [psutil.Process(server.pid), *(psutil.Process(w.pid) for w in workers)]
    tokens, open_drop, sold_out_drop = asyncio.run(prepare(server.url, settings))
    scripts = {"hello": (f"{server.url}/health/live", DONE)}
    for label, drop in (("order", open_drop), ("sold out", sold_out_drop)):
        scripts[label] = (server.url, order_script(tokens, f"/v1/drops/{drop}/orders"))
    for url, script in scripts.values():  # warm-up: pools, caches, first token checks
        wrk(url, script, WARM_UP_SECONDS, connections)
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in scripts}
    for _ in range(rounds):  # interleaved, so a slow spell of the machine hits every path
        for label, (url, script) in scripts.items():
            used = settled(processes)
            result = wrk(url, script, seconds, connections)
            ended = time.monotonic()
            result["backlog"] = handoff_backlog(settings) if settings.payment_workers else 0
            # a run's CPU includes what it left to finish (payment hand-offs, the backlog)
            spent = [after - before for before, after in zip(used, settled(processes), strict=True)]
            result["drained_s"] = time.monotonic() - ended
            requests = max(result["requests"], 1)
            result["cpu_us"] = spent[0] / requests * 1e6
            result["worker_cpu_us"] = sum(spent[1:]) / requests * 1e6
            runs[label].append(result)
    results = {
        label: {field: statistics.median(run[field] for run in done) for field in done[0]}
        for label, done in runs.items()
    }
    hello = results["hello"]
    for label, result in results.items():
        rows.append(
            [
                name,
                label,
                f"{result['rps']:,.0f}",
                f"{result['rps'] / hello['rps']:.0%}",
                f"{result['p50_ms']:.1f}",
                f"{result['p99_ms']:.1f}",
                f"{result['cpu_us']:.0f}",
                f"{hello['cpu_us'] / result['cpu_us']:.0%}",
                f"{result['worker_cpu_us']:.0f}" if workers else "-",
                f"{int(result['backlog']):,}" if settings.payment_workers else "-",
                f"{result['drained_s']:.1f}",
                f"{int(result['non_2xx']):,}",
                f"{int(result['errors']):,}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=6, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs of each path")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--real", action="store_true", help="also run on Redis + PostgreSQL")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    quiet_payments: dict[str, Any] = {
        "provider_callback_loss_rate": 1.0,
        "payment_timeout_seconds": 3600,
        "reservation_hold_seconds": 3600,
    }
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        rows += run_backend(
            "embedded",
            embedded_settings(Path(directory), shards=4, **quiet_payments),
            args.seconds,
            args.connections,
            args.rounds,
        )
        if args.real:
            from tests.conftest import real_settings

            # (name, payment workers the server hands orders to, whether they run here): the
            # server charging its own orders; one worker process beside it; the payments only
            # queued, for a worker elsewhere (what the server alone spends on an order)
            real_configurations = (
                ("redis+postgres", 0, True),
                ("redis+pg, 1 payment worker", 1, True),
                ("redis+pg, payments queued only", 1, False),
            )
            for index, (name, payment_workers, start_workers) in enumerate(real_configurations):
                # clean databases for each
                real = real_settings(Path(directory) / f"real-{index}", shards=4).model_copy(
                    update={**quiet_payments, "payment_workers": payment_workers}
                )
                rows += run_backend(
                    name,
                    real,
                    args.seconds,
                    args.connections,
                    args.rounds,
                    start_workers=start_workers,
                )
    header = [
        "backend",
        "path",
        "req/s",
        "vs hello",
        "p50 ms",
        "p99 ms",
        "server CPU us/req",
        "hello CPU / path CPU",
        "worker CPU us/req",
        "backlog at end",
        "idle after s",
        "non-2xx",
        "errors",
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
