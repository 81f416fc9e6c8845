"""The payment hand-off (payments/handoff.py, payments/worker.py): the processes that take orders
queue them on a Redis stream, payment workers take them in a consumer group and acknowledge each
once its payment is recorded, and a dead worker's entries are reclaimed by a live one. The queue
runs on fakeredis and real Redis; `dropsim serve --payment-workers 1` runs end to end on real
Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil
import pytest
import test_payment_service as payment_rigs
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from test_payment_service import FAST, MakeRig, an_order

from dropsim.backends import open_kv
from dropsim.orders.models import Order
from dropsim.payments.handoff import GROUP, STREAM, Handoff, PaymentQueue, PaymentWorker
from dropsim.payments.models import PaymentStatus
from dropsim.payments.provider import EmbeddedProvider
from dropsim.payments.worker import start_payment_workers, stop_payment_workers
from dropsim.ports import KeyValueStore
from dropsim.serving import start_provider_process
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.rush import (
    buyer_tokens,
    fast_provider,
    open_drop,
    orders_of,
    rush,
    rush_client,
    settled_audit,
)
from tests.test_workers import serve_command

# the payment service rig (a callback server, the simulated provider, SQLite or PostgreSQL)
database_url = payment_rigs.database_url
store = payment_rigs.store
make_rig = payment_rigs.make_rig

ORDERS = 500
IDLE = 0.5
"""The min-idle time of reclaims here: far above what a take and its acknowledgement cost."""
BUYERS = 60
STOCK = 80


@dataclass(frozen=True)
class HandoffStream:
    """A stream and consumer group of this test's own, and what Redis says about them."""

    kv: KeyValueStore
    stream: str
    group: str

    def queue(self, kv: KeyValueStore | None = None) -> PaymentQueue:
        return PaymentQueue(kv or self.kv, stream=self.stream, group=self.group)

    async def pending(self) -> dict[str, int]:
        """Entries taken and not acknowledged, by consumer."""
        summary = await self.kv.xpending(self.stream, self.group)
        return {consumer["name"]: int(consumer["pending"]) for consumer in summary["consumers"]}


@pytest.fixture
async def handoffs(kv: KeyValueStore) -> AsyncIterator[HandoffStream]:
    name = uuid.uuid4().hex[:12]
    found = HandoffStream(kv, f"test:handoff:{name}", f"test-workers-{name}")
    yield found
    await kv.delete(found.stream)


class CountedScripts:
    """A KV store whose scripts note how many arguments (orders) each call carried."""

    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv
        self.calls: list[int] = []

    def register_script(self, script: str) -> Callable[..., Awaitable[Any]]:
        inner = self._kv.register_script(script)

        async def call(keys: list[str] | None = None, args: list[Any] | None = None) -> Any:
            self.calls.append(len(args or ()))
            return await inner(keys=keys, args=args)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)


def orders(count: int, prefix: str = "key") -> list[Order]:
    return [
        an_order(user_id=f"usr_{index % 37}", key=f"{prefix}-{index}") for index in range(count)
    ]


def by_id(handoffs: list[Handoff]) -> list[Order]:
    return sorted((handoff.order for handoff in handoffs), key=lambda order: order.id)


async def take_all(queue: PaymentQueue, consumer: str, count: int = 20) -> list[Handoff]:
    """What `consumer` takes, `count` at a time, until nothing new is left."""
    taken: list[Handoff] = []
    while batch := await queue.take(consumer, count, block_ms=20):
        taken.extend(batch)
    return taken


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 15) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        await asyncio.sleep(0.05)


# --- the queue --------------------------------------------------------------------------------


async def test_concurrent_orders_are_queued_once_each_and_two_workers_share_them(
    handoffs: HandoffStream,
) -> None:
    counted = CountedScripts(handoffs.kv)
    queue = handoffs.queue(cast(KeyValueStore, counted))
    await queue.create_group()
    placed = orders(ORDERS)

    await asyncio.gather(*(queue.request_payment(order) for order in placed))

    assert sum(counted.calls) == ORDERS
    assert len(counted.calls) <= 4, f"one script call per order or so: {counted.calls}"
    assert await queue.backlog() == ORDERS
    first, second = await asyncio.gather(take_all(queue, "worker-a"), take_all(queue, "worker-b"))
    assert first, "worker-a took nothing"
    assert second, "worker-b took nothing"
    assert not {h.entry_id for h in first} & {h.entry_id for h in second}
    assert by_id(first + second) == sorted(placed, key=lambda order: order.id)
    assert await handoffs.pending() == {"worker-a": len(first), "worker-b": len(second)}

    await asyncio.gather(
        queue.done([h.entry_id for h in first]), queue.done([h.entry_id for h in second])
    )

    assert await queue.backlog() == 0
    assert await handoffs.pending() == {}
    assert await queue.take("worker-a", 10, block_ms=20) == []


async def test_orders_queued_before_the_group_are_delivered_and_a_second_create_is_harmless(
    handoffs: HandoffStream,
) -> None:
    queue = handoffs.queue()
    early = orders(3, prefix="early")
    for order in early:
        await queue.request_payment(order)

    await queue.create_group()
    await handoffs.queue().create_group()  # a second worker starting: BUSYGROUP, ignored
    late = an_order(key="late")
    await queue.request_payment(late)

    taken = await queue.take("worker", 10, block_ms=20)
    assert [handoff.order for handoff in taken] == [*early, late]
    groups = await handoffs.kv.xinfo_groups(handoffs.stream)
    assert [group["name"] for group in groups] == [handoffs.group]


async def test_creating_the_group_on_a_key_that_is_no_stream_fails(
    handoffs: HandoffStream,
) -> None:
    await handoffs.kv.set(handoffs.stream, "not a stream")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await handoffs.queue().create_group()


async def test_a_hand_off_that_cannot_be_queued_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the order is written and answered by the time it is handed off: an error here must not
    # turn its 201 into a 500 (the hold lapses instead, and the reaper puts the unit back)
    unreachable = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    order = an_order(key="lost")
    try:
        with caplog.at_level(logging.ERROR, "dropsim.payments.handoff"):
            await PaymentQueue(unreachable).request_payment(order)
    finally:
        await unreachable.aclose()

    assert f"could not hand off the payment of order {order.id}" in caplog.text


async def test_entries_a_dead_worker_left_unacknowledged_are_reclaimed_once_idle(
    handoffs: HandoffStream,
) -> None:
    queue = handoffs.queue()
    await queue.create_group()
    for order in orders(6):
        await queue.request_payment(order)
    dead = await queue.take("dead-worker", 6, block_ms=20)
    await queue.done([dead[0].entry_id, dead[1].entry_id])  # finished before it died
    untaken = orders(2, prefix="untaken")
    for order in untaken:
        await queue.request_payment(order)
    left = [handoff.entry_id for handoff in dead[2:]]

    assert await queue.reclaim("rescuer", IDLE, 100) == []  # not idle long enough yet
    await asyncio.sleep(IDLE + 0.2)
    oldest = await queue.reclaim("rescuer", IDLE, 2)
    rest = await queue.reclaim("rescuer", IDLE, 100)

    assert [handoff.entry_id for handoff in oldest] == left[:2]
    assert [handoff.entry_id for handoff in rest] == left[2:]
    assert [handoff.order for handoff in oldest + rest] == [h.order for h in dead[2:]]
    assert await handoffs.pending() == {"rescuer": 4}
    assert await queue.reclaim("third", IDLE, 100) == []  # just claimed: idle from zero again
    fresh = await queue.take("rescuer", 10, block_ms=20)
    assert [handoff.order for handoff in fresh] == untaken  # never taken, so never reclaimed


async def test_a_stream_entry_that_is_not_an_order_is_dropped_with_a_log(
    handoffs: HandoffStream, caplog: pytest.LogCaptureFixture
) -> None:
    queue = handoffs.queue()
    await queue.create_group()
    first, last = an_order(key="first"), an_order(key="last")
    await queue.request_payment(first)
    foreign = [
        await handoffs.kv.xadd(handoffs.stream, fields)
        for fields in (
            {"note": "no order field"},
            {"order": "{not json"},
            {"order": '{"id": "ord_1"}'},  # an order of another format
        )
    ]
    await queue.request_payment(last)

    with caplog.at_level(logging.ERROR, "dropsim.payments.handoff"):
        taken = await queue.take("worker", 10, block_ms=20)

    assert [handoff.order for handoff in taken] == [first, last]
    for entry_id in foreign:
        assert f"payment hand-off {entry_id} is not an order; dropped" in caplog.text
    assert await queue.backlog() == 2  # the orders, still to be done
    await queue.done([handoff.entry_id for handoff in taken])
    assert await queue.backlog() == 0  # dropped: never charged, never retried


# --- the worker -------------------------------------------------------------------------------


async def test_handle_acknowledges_only_the_payments_begun_and_the_rest_come_back(
    handoffs: HandoffStream, caplog: pytest.LogCaptureFixture
) -> None:
    queue = handoffs.queue()
    await queue.create_group()
    placed = orders(8)
    for order in placed:
        await queue.request_payment(order)
    failing = {placed[1].id, placed[5].id}
    taken = await queue.take("worker-a", 10, block_ms=20)
    all_at_once = asyncio.Barrier(len(taken))
    deadline = asyncio.get_running_loop().time() + 5
    begun: list[str] = []

    async def begin(order: Order) -> None:
        async with asyncio.timeout_at(deadline):  # begun one by one, none would get past it
            await all_at_once.wait()
        if order.id in failing:
            raise ConnectionError("the payments shard did not answer")
        begun.append(order.id)

    worker = PaymentWorker(queue, begin, consumer="worker-a")
    with caplog.at_level(logging.ERROR, "dropsim.payments.handoff"):
        assert await worker.handle(taken) == len(placed) - len(failing)

    assert sorted(begun) == sorted(order.id for order in placed if order.id not in failing)
    for order_id in failing:
        assert f"could not begin the payment of order {order_id}" in caplog.text
    assert await queue.backlog() == len(failing)
    assert await handoffs.pending() == {"worker-a": len(failing)}
    await asyncio.sleep(IDLE + 0.2)
    again = await queue.reclaim("worker-b", IDLE, 100)
    assert {handoff.order.id for handoff in again} == failing


async def test_a_running_worker_begins_fresh_and_abandoned_payments_until_none_is_left(
    handoffs: HandoffStream,
) -> None:
    queue = handoffs.queue()
    await queue.create_group()
    before = orders(30, prefix="before")
    for order in before:
        await queue.request_payment(order)
    abandoned = await queue.take("dead-worker", 12, block_ms=20)  # and it died
    begun: Counter[str] = Counter()

    async def begin(order: Order) -> None:
        await asyncio.sleep(0.001)
        begun[order.id] += 1

    worker = PaymentWorker(
        queue,
        begin,
        consumer="live-worker",
        batch=8,  # fewer than were abandoned: they take more than one reclaim
        block_ms=50,
        reclaim_idle_seconds=IDLE,
        reclaim_every_seconds=0.1,
    )
    worker.start()
    try:
        during = orders(40, prefix="during")
        await asyncio.gather(*(queue.request_payment(order) for order in during))
        wanted = {order.id for order in before + during}

        async def all_begun() -> bool:
            return set(begun) == wanted

        async def drained() -> bool:
            return await queue.backlog() == 0

        await eventually(all_begun, "every payment begun")
        await eventually(drained, "the backlog drained")
    finally:
        await worker.stop()

    assert {handoff.order.id for handoff in abandoned} <= set(begun)
    assert await handoffs.pending() == {}


# --- PaymentService.begin_payment --------------------------------------------------------------


async def test_begin_payment_returns_once_the_payment_is_recorded(make_rig: MakeRig) -> None:
    rig = await make_rig()
    order = an_order(key="handed-off")

    await rig.service.begin_payment(order)
    await rig.service.close()  # no background work survives this: the row must be there already

    recorded = await rig.store.payment_of_order(order.user_id, order.id)
    assert recorded is not None
    assert (recorded.status, recorded.amount_cents) == (PaymentStatus.REQUESTED, 2500)
    late = an_order(key="after-close")
    with pytest.raises(RuntimeError, match="closing"):  # the hand-off is then taken again
        await rig.service.begin_payment(late)
    assert await rig.store.payment_of_order(late.user_id, late.id) is None


async def test_a_payment_begun_twice_by_two_workers_is_charged_once(make_rig: MakeRig) -> None:
    async with EmbeddedProvider(FAST) as provider:
        # two workers that took the same hand-off (one was thought dead), then a third attempt
        first = await make_rig(provider_url=provider.url)
        second = await make_rig(provider_url=provider.url)
        order = an_order(key="taken-twice")

        await asyncio.gather(
            first.service.begin_payment(order), second.service.begin_payment(order)
        )
        await second.service.begin_payment(order)

        payment = await first.wait_for(order, PaymentStatus.SUCCEEDED)
        rigs = (first, second)

        async def settled() -> bool:
            return sum(len(rig.settle.calls) for rig in rigs) >= 1

        await eventually(settled, "the order settled")
        await asyncio.sleep(0.3)  # room for a second charge's settlement, if there were one
        charges = [
            request for rig in rigs for request in rig.requests if request.path == "/v1/charges"
        ]
        assert len(charges) == 1
        assert list(provider.provider.charges) == [payment.provider_charge_id]
        assert [call for rig in rigs for call in rig.settle.calls] == [
            (order.id, order.user_id, order.drop_id, True, "")
        ]


# --- the command line -------------------------------------------------------------------------


def worker_command(*flags: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`dropsim payments-worker` with `flags` and no DROPSIM_* variables (as `serve_command`)."""
    env = {key: val for key, val in os.environ.items() if not key.startswith("DROPSIM_")}
    command = [sys.executable, "-m", "dropsim.cli", "payments-worker", "--data-dir", str(data_dir)]
    return subprocess.run(
        [*command, *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one-line refusal of a command that exited 2, whatever the terminal wrapped."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return " ".join(result.stderr.split())


def test_serving_with_payment_workers_on_the_embedded_kv_is_refused(tmp_path: Path) -> None:
    result = serve_command("--payment-workers", "1", data_dir=tmp_path)

    message = refusal(result)
    assert "payment workers need a KV store every process shares" in message
    assert "memory://" in message
    assert "--payment-workers 0" in message
    assert "serving on" not in result.stdout


def test_a_payment_worker_on_the_embedded_kv_is_refused(tmp_path: Path) -> None:
    message = refusal(worker_command(data_dir=tmp_path))

    assert "payment workers need a KV store every process shares" in message
    assert "memory://" in message


def test_a_payment_worker_without_a_provider_url_is_refused(tmp_path: Path) -> None:
    # refused before it connects to anything: this Redis is never opened
    result = worker_command(
        "--kv-url",
        "redis://127.0.0.1:1/0",
        "--db-url",
        f"sqlite:///{tmp_path}/shard-{{shard}}.db",
        data_dir=tmp_path,
    )

    message = refusal(result)
    assert "a payment worker charges at the provider the servers use" in message
    assert "DROPSIM_PAYMENT_PROVIDER_URL" in message


# --- end to end -------------------------------------------------------------------------------


@dataclass
class Helpers:
    """The processes `dropsim serve` started beside itself (the provider, payment workers)."""

    processes: list[psutil.Process]
    outlived_server: list[str] = field(default_factory=list)
    """Command lines of those still running once the server had stopped (then killed)."""

    def payment_workers(self) -> list[psutil.Process]:
        return [p for p in self.processes if "payments-worker" in p.cmdline()]


@contextlib.contextmanager
def served_via_cli(settings: Settings) -> Iterator[tuple[ServerProcess, Helpers]]:
    """`dropsim serve` with `settings`; on the way out, whatever it left running is noted in
    `Helpers.outlived_server` and killed, so no worker lingers on the test database."""
    server = ServerProcess(settings, via_cli=True)
    with server:
        helpers = Helpers(psutil.Process(server.pid).children(recursive=True))
        yield server, helpers
    _, alive = psutil.wait_procs(helpers.processes, timeout=5)
    for process in alive:
        helpers.outlived_server.append(" ".join(process.cmdline()))
        process.kill()
    psutil.wait_procs(alive, timeout=5)


async def handoff_state(settings: Settings) -> tuple[int, int, list[str]]:
    """The default stream's backlog, entries ever added, and the group's consumers."""
    kv = await open_kv(settings.kv_url)
    try:
        queue = PaymentQueue(kv)
        backlog = await queue.backlog()
        if not await kv.exists(STREAM):
            return backlog, 0, []
        added = int((await kv.xinfo_stream(STREAM))["entries-added"])
        groups = [group["name"] for group in await kv.xinfo_groups(STREAM)]
        consumers = (
            [c["name"] for c in await kv.xinfo_consumers(STREAM, GROUP)] if GROUP in groups else []
        )
        return backlog, added, consumers
    finally:
        await kv.aclose()


async def statuses_of(client: Any, tokens: dict[str, str]) -> Counter[str]:
    found: Counter[str] = Counter()
    for token in tokens.values():
        found.update(order["status"] for order in await orders_of(client, token))
    return found


async def test_orders_handed_to_a_payment_worker_all_end_confirmed(
    real_backend_settings: Settings,
) -> None:
    settings = fast_provider(real_backend_settings).model_copy(update={"payment_workers": 1})
    with served_via_cli(settings) as (server, helpers):
        (worker,) = helpers.payment_workers()
        async with rush_client(server.url) as client:
            tokens = await buyer_tokens(client, server.settings, BUYERS)
            drop = await open_drop(client, stock=STOCK, limit=1)
            result = await rush(client, drop["id"], tokens, keys_per_buyer=1, clicks_per_key=2)
            audit = await settled_audit(client, server.settings, drop["id"])
            statuses = await statuses_of(client, tokens)

            async def drained() -> bool:
                return (await handoff_state(server.settings))[0] == 0

            await eventually(drained, "the hand-off stream drained")
            backlog, added, consumers = await handoff_state(server.settings)

    assert len(result.created) == BUYERS
    assert statuses == {"confirmed": BUYERS}
    assert audit["sold"] == BUYERS
    # every order went through the stream once (double clicks replayed, not queued again),
    # and the worker process took them
    assert (backlog, added) == (0, BUYERS)
    assert consumers == [f"{socket.gethostname()}-{worker.pid}"]


async def test_stopping_the_server_stops_its_payment_workers_and_provider(
    real_backend_settings: Settings,
) -> None:
    settings = real_backend_settings.model_copy(update={"payment_workers": 1})
    with served_via_cli(settings) as (_, helpers):
        assert len(helpers.payment_workers()) == 1
        assert len(helpers.processes) == 2  # and the provider

    assert helpers.outlived_server == []


async def test_a_payment_worker_ends_when_its_server_is_killed(
    real_backend_settings: Settings,
) -> None:
    settings = real_backend_settings.model_copy(update={"payment_workers": 1})
    with served_via_cli(settings) as (server, helpers):
        (worker,) = helpers.payment_workers()
        server.kill()  # SIGKILL: no `finally` runs in the server
        _, alive = psutil.wait_procs([worker], timeout=10)

    assert alive == []  # the kernel told the worker its parent had gone (PR_SET_PDEATHSIG)


async def test_orders_wait_in_the_stream_until_a_payment_worker_starts(
    real_backend_settings: Settings,
) -> None:
    terms = fast_provider(real_backend_settings)
    provider, provider_url = start_provider_process(terms)
    try:
        # the API queues for payment workers; bare uvicorn starts none
        settings = terms.model_copy(
            update={"payment_workers": 1, "payment_provider_url": provider_url}
        )
        with ServerProcess(settings) as server:
            async with rush_client(server.url) as client:
                tokens = await buyer_tokens(client, server.settings, BUYERS)
                drop = await open_drop(client, stock=STOCK, limit=1)
                result = await rush(client, drop["id"], tokens, keys_per_buyer=1)
                await asyncio.sleep(1.0)  # ten times the provider's p99: no one charges them
                waiting = await statuses_of(client, tokens)
                queued = await handoff_state(server.settings)

                workers = start_payment_workers(server.settings, 1)
                try:
                    audit = await settled_audit(client, server.settings, drop["id"])
                    statuses = await statuses_of(client, tokens)

                    async def drained() -> bool:
                        return (await handoff_state(server.settings))[0] == 0

                    await eventually(drained, "the hand-off stream drained")
                finally:
                    stop_payment_workers(workers)
    finally:
        provider.terminate()
        provider.wait(timeout=10)

    assert len(result.created) == BUYERS
    assert waiting == {"pending_payment": BUYERS}
    assert queued == (BUYERS, BUYERS, [])  # queued, and no consumer has ever read the stream
    assert statuses == {"confirmed": BUYERS}
    assert audit["sold"] == BUYERS
    assert [worker.returncode for worker in workers] == [0]  # stopped cleanly on SIGTERM
