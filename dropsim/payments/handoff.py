"""The payment hand-off between processes: a work queue on a Redis stream.

With payment workers (`dropsim serve --payment-workers N`), a server process that took an order
does not charge it itself: it queues the order on a stream, and a worker process takes it with a
consumer group, records the payment and charges the provider. The API processes then spend
nothing on the provider's HTTP round trips and on the payment rows, which cost more than the
order itself (see the README's figures). Callbacks still come to the API, which any process can
apply (the payment state machine lives in SQL).

Delivery is at least once: an entry is acknowledged, and deleted, only once its payment row is
written. Entries a worker took and never acknowledged (it died) are reclaimed by another worker
once they have been idle `RECLAIM_IDLE_SECONDS`; a payment recorded twice is not charged twice
(`PaymentService.begin_payment`). An order whose hand-off never becomes a payment is released
when its hold lapses, by the reaper, as for any order left unpaid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import msgspec
from redis.exceptions import ResponseError

from dropsim.background import BackgroundTask
from dropsim.batching import Batcher
from dropsim.orders.models import Order
from dropsim.ports import KeyValueStore

logger = logging.getLogger("dropsim.payments.handoff")

STREAM = "payments:handoff"
GROUP = "payment-workers"
RECLAIM_IDLE_SECONDS = 30.0
"""How long a taken entry may stay unacknowledged before another worker takes it over: far
longer than recording a payment takes, so a live worker's entries are not taken from it."""

# KEYS: the stream    ARGV: encoded orders    Appends them in order; returns their entry ids.
ENQUEUE = """
local ids = {}
for i = 1, #ARGV do
  ids[i] = redis.call('XADD', KEYS[1], '*', 'order', ARGV[i])
end
return ids
"""

_encode = msgspec.json.encode
_decode_order = msgspec.json.Decoder(Order).decode


@dataclass(frozen=True, slots=True)
class Handoff:
    """One queued payment: the stream entry and the order it carries."""

    entry_id: str
    order: Order


class PaymentQueue:
    """Both ends of the hand-off: `request_payment` (the order service's `PaymentRequester`)
    queues; `take`, `reclaim` and `done` are a worker's."""

    def __init__(self, kv: KeyValueStore, *, stream: str = STREAM, group: str = GROUP) -> None:
        self._kv = kv
        self._stream = stream
        self._group = group
        self._enqueue = kv.register_script(ENQUEUE)
        self._queued: Batcher[bytes, str] = Batcher(self._enqueue_batch)

    async def request_payment(self, order: Order) -> None:
        """Queue `order`'s payment; concurrent calls share one script call. Never raises, as
        `PaymentService.request_payment` never does: the order is written and answered by now,
        so a hand-off that fails leaves it to lapse, and the reaper puts its unit back."""
        try:
            await self._queued.submit(_encode(order))
        except Exception:
            logger.exception("could not hand off the payment of order %s; it will lapse", order.id)

    async def _enqueue_batch(self, orders: list[bytes]) -> list[str]:
        ids: list[str] = await self._enqueue(keys=[self._stream], args=orders)
        return [str(entry_id) for entry_id in ids]

    async def create_group(self) -> None:
        """Make the workers' consumer group (and the stream) unless they exist; the group
        starts at the stream's beginning, so nothing queued before it is missed."""
        try:
            await self._kv.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def take(self, consumer: str, count: int, block_ms: int) -> list[Handoff]:
        """Entries no worker has taken yet, waiting up to `block_ms` for the first."""
        reply = cast(
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
            await self._kv.xreadgroup(
                self._group, consumer, {self._stream: ">"}, count=count, block=block_ms
            ),
        )
        if not reply:
            return []
        return await self._orders_in(reply[0][1])

    async def reclaim(self, consumer: str, min_idle_seconds: float, count: int) -> list[Handoff]:
        """Entries taken by some worker and left unacknowledged for `min_idle_seconds`,
        now `consumer`'s (at most `count` of them, oldest first)."""
        reply = cast(
            "list[object]",
            await self._kv.xautoclaim(
                self._stream,
                self._group,
                consumer,
                min_idle_time=int(min_idle_seconds * 1000),
                start_id="0-0",
                count=count,
            ),
        )
        entries = cast("list[tuple[str, dict[str, str]] | None]", reply[1])
        return await self._orders_in([entry for entry in entries if entry is not None])

    async def _orders_in(self, entries: list[tuple[str, dict[str, str]]]) -> list[Handoff]:
        """The hand-offs among `entries`; any other entry (a foreign writer, a format this
        version does not know) can never be charged here: logged with its fields and dropped,
        so it is neither retried nor counted in the backlog for ever."""
        handoffs, foreign = [], []
        for entry_id, fields in entries:
            try:
                handoffs.append(Handoff(entry_id, _decode_order(fields["order"])))
            except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
                logger.error("payment hand-off %s is not an order; dropped: %r", entry_id, fields)
                foreign.append(entry_id)
        await self.done(foreign)
        return handoffs

    async def done(self, entry_ids: list[str]) -> None:
        """Acknowledge and delete handled entries: the stream holds only what is left to do."""
        if not entry_ids:
            return
        async with self._kv.pipeline(transaction=True) as pipe:
            pipe.xack(self._stream, self._group, *entry_ids)
            pipe.xdel(self._stream, *entry_ids)
            await pipe.execute()

    async def backlog(self) -> int:
        """Hand-offs queued and not yet done (taken or not)."""
        return int(await self._kv.xlen(self._stream))


def consumer_name() -> str:
    """This process's consumer name in the group: host and pid, unique among live workers."""
    return f"{socket.gethostname()}-{os.getpid()}"


class PaymentWorker(BackgroundTask):
    """Takes hand-offs and begins their payments (`PaymentService.begin_payment`), a batch at a
    time; first, and then every `reclaim_every_seconds`, it takes over entries a dead worker
    left behind."""

    name = "payment-worker"

    def __init__(
        self,
        queue: PaymentQueue,
        begin_payment: Callable[[Order], Awaitable[None]],
        *,
        consumer: str,
        batch: int = 256,
        block_ms: int = 1000,
        reclaim_idle_seconds: float = RECLAIM_IDLE_SECONDS,
        reclaim_every_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self._queue = queue
        self._begin = begin_payment
        self._consumer = consumer
        self._batch = batch
        self._block_ms = block_ms
        self._reclaim_idle = reclaim_idle_seconds
        self._reclaim_every = reclaim_every_seconds

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        await self._queue.create_group()
        next_reclaim = loop.time()
        while True:
            try:
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self._reclaim_every
                    await self.handle(
                        await self._queue.reclaim(self._consumer, self._reclaim_idle, self._batch)
                    )
                await self.handle(
                    await self._queue.take(self._consumer, self._batch, self._block_ms)
                )
            except Exception:  # (cancellation is no Exception: it ends the loop)
                logger.exception("payment worker %s: taking hand-offs failed", self._consumer)
                await asyncio.sleep(1.0)

    async def handle(self, handoffs: list[Handoff]) -> int:
        """Begin every payment of the batch at once (their rows are group-committed) and
        acknowledge those recorded; the others stay pending and are reclaimed later."""
        if not handoffs:
            return 0
        outcomes = await asyncio.gather(
            *(self._begin(handoff.order) for handoff in handoffs), return_exceptions=True
        )
        recorded = []
        for handoff, outcome in zip(handoffs, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                logger.error(
                    "could not begin the payment of order %s (taken again later): %s",
                    handoff.order.id,
                    outcome,
                )
            else:
                recorded.append(handoff.entry_id)
        await self._queue.done(recorded)
        return len(recorded)
