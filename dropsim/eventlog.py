"""The event log: a capped Redis stream on the KV backend, so every process sees every event."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import msgspec
from prometheus_client import Counter

from dropsim.batching import Batcher
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


@dataclass(frozen=True, slots=True)
class LogEntry:
    """An event as the log holds it, its data still serialised (a stream encodes it once)."""

    id: str
    type: str
    at: float
    data_json: str

    def data(self) -> dict[str, object]:
        """The event's data, decoded."""
        return _decode_data(self.data_json)


_decode_data = msgspec.json.Decoder(dict[str, object]).decode


def id_key(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair; ValueError if it is not one (`<ms>-<seq>`)."""
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence or 0)


# KEYS: the stream    ARGV: max length (approximate), then per event: type, at, data
# Appends a batch of events in order; returns their ids.
APPEND = """
local ids = {}
for i = 0, (#ARGV - 1) / 3 - 1 do
  local a = 2 + 3 * i
  ids[i + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                          'type', ARGV[a], 'at', ARGV[a + 1], 'data', ARGV[a + 2])
end
return ids
"""


class EventLog:
    """Append events and read them back in order from any id."""

    def __init__(self, kv: KeyValueStore, *, max_len: int = 100_000, stream: str = STREAM) -> None:
        self._kv = kv
        self._max_len = max_len
        self._stream = stream
        self._append = kv.register_script(APPEND)
        self._appends: Batcher[tuple[str, str, str], str] = Batcher(self._append_batch)

    async def publish(self, event: Event) -> str:
        """Append `event`; return its id (the stream id, which orders events globally).

        Concurrent publishes share one script call and keep the order they were made in; the
        envelope's `at` is the time of this call."""
        event_id = await self._appends.submit(
            (event.type, repr(time.time()), msgspec.json.encode(event).decode())
        )
        _count_published(event.type)
        return event_id

    async def _append_batch(self, events: list[tuple[str, str, str]]) -> list[str]:
        args: list[str | int] = [self._max_len]
        for fields in events:
            args += fields
        ids: list[str] = await self._append(keys=[self._stream], args=args)
        return [str(event_id) for event_id in ids]

    async def read_after(self, after_id: str = "0-0", count: int = 1000) -> list[Envelope]:
        """Events with ids strictly greater than `after_id`, oldest first."""
        entries: list[tuple[str, dict[str, str]]] = cast(
            "list[tuple[str, dict[str, str]]]",
            await self._kv.xrange(self._stream, min=f"({after_id}", count=count),
        )
        return [_envelope(entry_id, fields) for entry_id, fields in entries]

    async def entries_after(self, after_id: str, count: int = 1000) -> list[LogEntry]:
        """Like `read_after`, with the data left serialised."""
        entries = cast(
            "list[tuple[str, dict[str, str]]]",
            await self._kv.xrange(self._stream, min=f"({after_id}", count=count),
        )
        return [_entry(entry_id, fields) for entry_id, fields in entries]

    async def wait_after(self, after_id: str, block_ms: int, count: int = 1000) -> list[LogEntry]:
        """Entries after `after_id`, waiting up to `block_ms` for one to arrive (XREAD BLOCK)."""
        reply = cast(
            "list[tuple[str, list[tuple[str, dict[str, str]]]]] | None",
            await self._kv.xread({self._stream: after_id}, count=count, block=block_ms),
        )
        if not reply:
            return []
        return [_entry(entry_id, fields) for entry_id, fields in reply[0][1]]

    async def first_id(self) -> str | None:
        """Id of the oldest event still held (older ones were trimmed), None if the log is empty."""
        oldest = cast("list[tuple[str, object]]", await self._kv.xrange(self._stream, count=1))
        return oldest[0][0] if oldest else None

    async def last_id(self) -> str:
        """Id of the newest event, "0-0" when there is none."""
        newest = cast("list[tuple[str, object]]", await self._kv.xrevrange(self._stream, count=1))
        return newest[0][0] if newest else "0-0"


def _entry(entry_id: str, fields: dict[str, str]) -> LogEntry:
    return LogEntry(entry_id, fields["type"], float(fields["at"]), fields["data"])


def _envelope(entry_id: str, fields: dict[str, str]) -> Envelope:
    return Envelope(
        id=entry_id,
        type=fields["type"],
        at=float(fields["at"]),
        data=msgspec.json.decode(fields["data"]),
    )
