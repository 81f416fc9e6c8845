"""SSE fan-out: time from a drop alert's publication to the last of N connected followers.

    python benchmarks/sse_fanout.py [--clients 1000,5000,10000] [--client-processes 2]

Starts one dropsim server process (embedded backends), seeds a creator with as many followers
as the largest round needs, and for each N connects N followers from separate client processes
(plain asyncio sockets on uvloop, so the clients cost little), lets a drop go live, and reports
the lag of every client (receive time - the event's publish time `at`): p50, p99, max (the last
client), and the server's memory per connection (RSS growth / N). Figures are printed, never
asserted; the clock is the machine's, shared by server and clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import httpx

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.testing import ServerProcess, embedded_settings

HANDLE = "fanout"


def client_process(port: int, tokens: list[str], pipe: Connection) -> None:
    """Connect a stream per token, say when all are open, then report each alert's lag."""
    import uvloop

    async def connect(token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open one stream, retrying connects that are refused or reset (a full listen backlog)."""
        for attempt in range(8):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
                writer.write(
                    f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
                )
                status = await reader.readline()
            except OSError:
                await asyncio.sleep(0.2 * 2**attempt)
                continue
            if status.split(b" ")[1:2] == [b"200"]:
                return reader, writer
            writer.close()
            raise RuntimeError(f"the stream was refused: {status.decode().strip()}")
        raise RuntimeError("could not connect after 8 attempts")

    async def one(token: str, opened: asyncio.Queue[str | None], lags: list[float]) -> None:
        try:
            reader, writer = await connect(token)
        except (OSError, RuntimeError) as exc:
            opened.put_nowait(str(exc))
            return
        announced = False
        while True:
            line = await reader.readline()
            if not line:
                return
            if line.startswith(b"retry:") and not announced:
                announced = True
                opened.put_nowait(None)
            elif line.startswith(b"data: ") and b'"drop.went_live"' in line:
                lags.append(time.time() - json.loads(line[6:])["at"])
                writer.close()
                return

    async def main() -> None:
        opened: asyncio.Queue[str | None] = asyncio.Queue()
        lags: list[float] = []
        tasks = []
        for index, token in enumerate(tokens):
            tasks.append(asyncio.create_task(one(token, opened, lags)))
            if index % 200 == 199:
                await asyncio.sleep(0.05)  # do not trip the listen backlog
        failures = [failure for _ in tokens if (failure := await opened.get()) is not None]
        pipe.send(failures or "open")
        if failures:
            for task in tasks:
                task.cancel()
            return
        await asyncio.gather(*tasks)
        pipe.send(lags)

    uvloop.run(main())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def run_round(
    server: ServerProcess, client: httpx.Client, creator: str, tokens: list[str], processes: int
) -> dict[str, float]:
    pid = server.pid
    before = rss_kib(pid)
    pipes, children = [], []
    for part in range(processes):
        ours, theirs = multiprocessing.Pipe()
        child = multiprocessing.Process(
            target=client_process, args=(server.port, tokens[part::processes], theirs)
        )
        child.start()
        pipes.append(ours)
        children.append(child)
    for pipe in pipes:
        answer = pipe.recv()
        if answer != "open":
            for child in children:
                child.join()
            sys.exit(f"{len(answer)} streams could not be opened, for example: {answer[0]}")
    time.sleep(0.5)
    per_connection = (rss_kib(pid) - before) / len(tokens)

    product = client.post("/v1/products", json={"name": "Tee"}, headers=_bearer(creator))
    starts = datetime.now(UTC) + timedelta(seconds=1)
    drop = client.post(
        "/v1/drops",
        json={
            "product_id": product.json()["id"],
            "stock": 10,
            "price_cents": 100,
            "starts_at": starts.isoformat(),
            "ends_at": (starts + timedelta(hours=1)).isoformat(),
        },
        headers=_bearer(creator),
    )
    assert drop.status_code == 201, drop.text
    lags = [lag for pipe in pipes for lag in pipe.recv()]
    for child in children:
        child.join()
    assert len(lags) == len(tokens), f"{len(lags)} of {len(tokens)} clients got the alert"
    return {
        "p50_ms": percentile(lags, 0.50) * 1000,
        "p99_ms": percentile(lags, 0.99) * 1000,
        "last_ms": max(lags) * 1000,
        "mean_ms": statistics.fmean(lags) * 1000,
        "kib_per_connection": per_connection,
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1000,5000,10000")
    parser.add_argument("--client-processes", type=int, default=2)
    args = parser.parse_args()
    sizes = [int(size) for size in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as directory:
        settings = embedded_settings(Path(directory), sse_max_connections=max(sizes) + 100)
        issuer = TokenIssuer(settings.signing_secret(), 3600)
        admin = _bearer(issuer.issue("bench-admin", Role.ADMIN))
        with (
            ServerProcess(settings) as server,
            httpx.Client(base_url=server.url, timeout=300) as client,
        ):
            creator_id = client.post(
                "/v1/admin/seed/creators",
                json={"handle": HANDLE, "display_name": "Fan-out"},
                headers=admin,
            ).json()["creator_id"]
            client.post(
                "/v1/admin/seed/followers",
                json={"creator_id": creator_id, "count": max(sizes)},
                headers=admin,
            ).raise_for_status()
            creator = issuer.issue(f"usr_{HANDLE}", Role.CREATOR)
            print(f"{'clients':>8} {'p50 ms':>8} {'p99 ms':>8} {'last ms':>8} {'KiB/conn':>9}")
            for size in sizes:
                tokens = [issuer.issue(fan_id(HANDLE, n), Role.BUYER) for n in range(size)]
                figures = run_round(server, client, creator, tokens, args.client_processes)
                print(
                    f"{size:>8} {figures['p50_ms']:>8.0f} {figures['p99_ms']:>8.0f} "
                    f"{figures['last_ms']:>8.0f} {figures['kib_per_connection']:>9.1f}",
                    flush=True,
                )
                time.sleep(1.0)  # let the server drop the closed streams


if __name__ == "__main__":
    main()
