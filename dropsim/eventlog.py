"""The event log: a capped Redis stream on the KV backend, so every process sees every event."""

from __future__ import annotations

import time
from typing import cast

import msgspec
from prometheus_client import Counter

from dropsim.events import Envelope, Event
from dropsim.metrics import EVENTS_PUBLISHED
from dropsim.ports import KeyValueStore

STREAM = "events"

_published: dict[str, Counter] = {}
"""One bound counter per event type (a handful of types, so the dict stays small)."""


def _count_published(event_type: str) -> None:
    counter = _published.get(event_type)
    if counter is None:
        counter = _published[event_type] = EVENTS_PUBLISHED.labels(event_type)
    counter.inc()


class EventLog:
    """Append events and read them back in order from any id."""

    def __init__(self, kv: KeyValueStore, *, max_len: int = 100_000, stream: str = STREAM) -> None:
        self._kv = kv
        self._max_len = max_len
        self._stream = stream

    async def publish(self, event: Event) -> str:
        """Append `event`; return its id (the stream id, which orders events globally)."""
        fields = {
            "type": event.type,
            "at": repr(time.time()),
            "data": msgspec.json.encode(event).decode(),
        }
        event_id = await self._kv.xadd(
            self._stream,
            fields,  # type: ignore[arg-type]  # redis-py's mapping type is invariant
            maxlen=self._max_len,
            approximate=True,
        )
        _count_published(event.type)
        return str(event_id)

    async def read_after(self, after_id: str = "0-0", count: int = 1000) -> list[Envelope]:
        """Events with ids strictly greater than `after_id`, oldest first."""
        entries: list[tuple[str, dict[str, str]]] = cast(
            "list[tuple[str, dict[str, str]]]",
            await self._kv.xrange(self._stream, min=f"({after_id}", count=count),
        )
        return [_envelope(entry_id, fields) for entry_id, fields in entries]


def _envelope(entry_id: str, fields: dict[str, str]) -> Envelope:
    return Envelope(
        id=entry_id,
        type=fields["type"],
        at=float(fields["at"]),
        data=msgspec.json.decode(fields["data"]),
    )
