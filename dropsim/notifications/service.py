"""Use cases of the notification service: stream tickets, opening a resumable stream, the inbox."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from dropsim.creators.service import CreatorService
from dropsim.errors import AuthenticationFailed, DomainError, InvalidRequest
from dropsim.eventlog import EventLog, id_key
from dropsim.events import DropWentLive, Envelope
from dropsim.follows.service import FollowService
from dropsim.metrics import SSE_CONNECTIONS
from dropsim.notifications.frames import Frame, control_frame, event_frame, retry_frame
from dropsim.notifications.hub import Hub, Subscriber
from dropsim.notifications.routing import audiences
from dropsim.notifications.stock import StockUpdates
from dropsim.notifications.tickets import StreamTickets

MAX_WATCHED_DROPS = 50
REPLAY_PAGE = 1000


class StreamsFull(DomainError):
    """This process holds as many streams as it may; the client should try again shortly."""

    status, code, title = 503, "streams_full", "Too many open streams"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_connections: int
    """Streams one process holds before it answers 503 (each costs a socket and memory)."""
    retry_ms: int
    """The `retry:` a client gets (jittered +-25 % so reconnects after a restart spread out)."""


class NotificationService:
    def __init__(
        self,
        hub: Hub,
        tickets: StreamTickets,
        events: EventLog,
        stock: StockUpdates,
        follows: FollowService,
        creators: CreatorService,
        limits: StreamLimits,
    ) -> None:
        self._hub = hub
        self._tickets = tickets
        self._events = events
        self._stock = stock
        self._follows = follows
        self._creators = creators
        self._limits = limits

    @property
    def ticket_seconds(self) -> int:
        return self._tickets.ttl_seconds

    async def issue_ticket(self, user_id: str) -> str:
        return await self._tickets.issue(user_id)

    async def redeem_ticket(self, ticket: str) -> str:
        user_id = await self._tickets.redeem(ticket)
        if user_id is None:
            raise AuthenticationFailed(
                "the stream ticket is unknown, used or expired: ask for a new one",
                code="invalid_ticket",
            )
        return user_id

    async def open_stream(
        self, user_id: str, drop_ids: Sequence[str], last_event_id: str | None
    ) -> tuple[Subscriber, AsyncGenerator[Frame, None]]:
        """A new stream's subscriber and its frames: the `retry:` advice, what the client missed
        since `last_event_id` (or a reset notice when that is beyond the log's retention), a
        stock snapshot per watched drop, then live frames until the client goes away."""
        if len(self._hub) >= self._limits.max_connections:
            raise StreamsFull(
                f"this server holds {len(self._hub)} streams, its limit; retry shortly",
                retry_after_seconds=random.randint(1, 5),
            )
        if len(drop_ids) > MAX_WATCHED_DROPS:
            raise InvalidRequest(f"watch at most {MAX_WATCHED_DROPS} drops per stream")
        resume_key = None
        if last_event_id is not None:
            try:
                resume_key = id_key(last_event_id)
            except ValueError:
                raise InvalidRequest(
                    "Last-Event-ID is not an event id of this server", code="invalid_event_id"
                ) from None
        creators = await self._follows.following_ids(user_id)
        subscriber = Subscriber(user_id, creators, drop_ids)
        return subscriber, self._frames(subscriber, last_event_id, resume_key)

    async def _frames(
        self,
        subscriber: Subscriber,
        last_event_id: str | None,
        resume_key: tuple[int, int] | None,
    ) -> AsyncGenerator[Frame, None]:
        hub = self._hub
        position = hub.attach(subscriber)
        SSE_CONNECTIONS.inc()
        try:
            jitter = random.uniform(0.75, 1.25)
            yield retry_frame(int(self._limits.retry_ms * jitter))
            if last_event_id is not None and resume_key is not None:
                if resume_key > id_key(position):
                    subscriber.resume_after = resume_key  # seen through another process
                async for frame in self._replay(subscriber, last_event_id, position):
                    yield frame
            for drop_id in subscriber.drops:
                snapshot = await self._stock.snapshot(drop_id, position)
                if snapshot is not None:
                    yield snapshot
            while True:
                live = await subscriber.next_frames()
                if live is None:
                    return  # too far behind: the client reconnects and resumes
                yield live
        finally:
            hub.detach(subscriber)
            SSE_CONNECTIONS.dec()

    async def _replay(
        self, subscriber: Subscriber, last_event_id: str, position: str
    ) -> AsyncIterator[Frame]:
        """Events for `subscriber` after `last_event_id` up to `position` (live delivery covers
        the rest), read from the log."""
        first = await self._events.first_id()
        resume_key, end = id_key(last_event_id), id_key(position)
        if first is None or resume_key < id_key(first):
            if resume_key < end:
                yield control_frame(
                    "stream.reset",
                    {
                        "reason": "events since Last-Event-ID are beyond the log's retention",
                        "last_event_id": last_event_id,
                    },
                )
            return
        cursor = last_event_id
        while id_key(cursor) < end:
            entries = await self._events.entries_after(cursor, REPLAY_PAGE)
            for entry in entries:
                if id_key(entry.id) > end:
                    return
                data = entry.data()
                if any(
                    subscriber.listens_to(audience, key)
                    for audience, key in audiences(entry.type, data)
                ):
                    yield event_frame(entry.id, entry.type, entry.at, entry.data_json)
            if len(entries) < REPLAY_PAGE:
                return
            cursor = entries[-1].id

    async def inbox(self, user_id: str, *, before: float | None, limit: int) -> list[Envelope]:
        """Drop alerts of creators the user follows, newest first (read at request time: a
        celebrity's drop is not copied into a million inboxes)."""
        creators = await self._follows.following_ids(user_id)
        drops = await self._creators.started_drops(
            creators, before=time.time() if before is None else before, limit=limit
        )
        return [
            Envelope(
                id=f"drop:{drop.id}",
                type=DropWentLive.type,
                at=drop.starts_at.timestamp(),
                data={
                    "drop_id": drop.id,
                    "creator_id": drop.creator_id,
                    "product_id": drop.product_id,
                    "stock": drop.stock,
                    "price_cents": drop.price_cents,
                    "status": drop.status.value,
                    "starts_at": drop.starts_at.timestamp(),
                    "ends_at": drop.ends_at.timestamp(),
                },
            )
            for drop in drops
        ]
