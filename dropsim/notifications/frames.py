"""SSE frames encoded once per event and written to every stream as the same bytes."""

from __future__ import annotations

import json

from litestar.response import ServerSentEventMessage


class Frame(ServerSentEventMessage):
    """An already-encoded SSE frame: Litestar's SSE response calls `encode()` per stream, and
    this returns the bytes made once, however many streams the event goes to."""

    def __init__(self, encoded: bytes, event_id: str | None = None) -> None:
        super().__init__(data=None, id=event_id)
        self.encoded = encoded
        self.event_id = event_id

    def encode(self) -> bytes:
        return self.encoded


def event_frame(event_id: str, event_type: str, at: float, data_json: str) -> Frame:
    """`id:`, `event:` and the envelope `{id, type, at, data}` as `data:` (`data_json` is the
    event's data already serialised, as the event log stores it)."""
    envelope = (
        f'{{"id":"{event_id}","type":{json.dumps(event_type)},"at":{at!r},"data":{data_json}}}'
    )
    text = f"id: {event_id}\r\nevent: {event_type}\r\ndata: {envelope}\r\n\r\n"
    return Frame(text.encode(), event_id)


def control_frame(event_type: str, data: dict[str, object]) -> Frame:
    """A frame that is not an event of the log (no `id:`, so it does not move the client's
    Last-Event-ID): a reset notice, for example."""
    text = f"event: {event_type}\r\ndata: {json.dumps(data, separators=(',', ':'))}\r\n\r\n"
    return Frame(text.encode())


def retry_frame(milliseconds: int) -> Frame:
    return Frame(f"retry: {milliseconds}\r\n\r\n".encode())


def joined(frames: list[Frame]) -> Frame:
    """Several queued frames as one write (one ASGI send instead of many)."""
    if len(frames) == 1:
        return frames[0]
    return Frame(b"".join(frame.encoded for frame in frames), frames[-1].event_id)


HEARTBEAT = Frame(b": heartbeat\r\n\r\n")
