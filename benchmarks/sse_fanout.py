"""SSE fan-out: time from a drop alert's publication to the last of N connected followers.

    python benchmarks/sse_fanout.py [--clients 1000,5000,10000] [--client-processes 2]

Starts one dropsim server process (embedded backends), seeds a creator with as many followers
as the largest round needs, and for each N connects N followers from separate client processes
(asyncio protocols on uvloop, so the clients cost little; they stay connected after the alert,
as real ones do, until the round ends), lets a drop go live, and reports the lag of every client
(arrival of the alert frame - the event's publish time `at`): p50, p99, max (the last client),
and the server's memory per connection (RSS growth / N). Figures are printed, never
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
from typing import Any, cast

import httpx

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.testing import ServerProcess, embedded_settings

HANDLE = "fanout"


class StreamClient(asyncio.Protocol):
    """One stream, read with a protocol (no reader task): stamps the arrival of the alert frame
    and stays connected, as a real client does, until the round is over."""

    def __init__(self, token: str) -> None:
        self._request = (
            f"GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done when the stream's first frame arrived (an error if it was refused or lost)."""
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.received_at: float | None = None
        self.alert = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self.received_at is not None:
            return
        self._buffer += data
        if not self.opened.done():
            if b"\r\n" in self._buffer and not self._buffer.startswith(b"HTTP/1.1 200"):
                status = bytes(self._buffer.split(b"\r\n", 1)[0]).decode()
                self.opened.set_exception(RuntimeError(f"the stream was refused: {status}"))
            elif b"retry:" in self._buffer:
                self._buffer.clear()
                self.opened.set_result(None)
            return
        start = self._buffer.find(b"event: drop.went_live")
        if start >= 0 and self._buffer.find(b"\r\n\r\n", start) >= 0:
            self.received_at = time.time()
            self.alert = bytes(self._buffer[start:])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionResetError(f"lost before the first frame: {exc}"))

    def lag(self) -> float:
        """Arrival time - the event's publish time (`at` in its envelope)."""
        assert self.received_at is not None
        data = self.alert.split(b"data: ", 1)[1].split(b"\r\n", 1)[0]
        at: float = json.loads(data)["at"]
        return self.received_at - at


def client_process(port: int, tokens: list[str], pipe: Connection) -> None:
    """Open a stream per token, say when all are open, then report each alert's lag."""
    import uvloop

    async def connect(token: str) -> StreamClient | str:
        """The open stream, or why it could not be opened; connects that are refused or reset
        (a full listen backlog) are retried."""
        loop = asyncio.get_running_loop()
        for attempt in range(8):
            try:
                _, client = await loop.create_connection(
                    lambda: StreamClient(token), "127.0.0.1", port
                )
                await client.opened
                return client
            except OSError:
                await asyncio.sleep(0.2 * 2**attempt)
            except RuntimeError as refused:
                return str(refused)
        return "could not connect after 8 attempts"

    async def main() -> None:
        pending = []
        for index, token in enumerate(tokens):
            pending.append(asyncio.create_task(connect(token)))
            if index % 200 == 199:
                await asyncio.sleep(0.05)  # do not trip the listen backlog
        outcomes = await asyncio.gather(*pending)
        clients = [outcome for outcome in outcomes if isinstance(outcome, StreamClient)]
        failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
        pipe.send(failures or "open")
        if not failures:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(client.received_at is not None for client in clients):
                    break
                await asyncio.sleep(0.05)
            pipe.send([client.lag() for client in clients if client.received_at is not None])
        for client in clients:
            if client.transport is not None:
                client.transport.close()

    uvloop.run(main())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def from_child(pipe: Connection, child: multiprocessing.Process) -> Any:
    """The client process's next message; exits if the process died instead of sending it."""
    while not pipe.poll(1.0):
        if not child.is_alive():
            sys.exit(f"a client process died (exit code {child.exitcode}); see its traceback")
    return pipe.recv()


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
    for pipe, child in zip(pipes, children, strict=True):
        answer = from_child(pipe, child)
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
    lags = [
        lag for pipe, child in zip(pipes, children, strict=True) for lag in from_child(pipe, child)
    ]
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
