"""Server-sent events on the wire: turn `text/event-stream` lines into events (no I/O here)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerEvent:
    id: str
    type: str
    data: str

    def envelope(self) -> dict[str, Any] | None:
        """The dropsim envelope `{id, type, at, data}` in the data field, if it is one."""
        try:
            value = json.loads(self.data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def published_at(self) -> float | None:
        """When the event was published (epoch seconds), from the envelope's `at`."""
        envelope = self.envelope()
        at = None if envelope is None else envelope.get("at")
        return float(at) if isinstance(at, int | float) else None


class EventParser:
    """Feed it lines (without the newline); it returns an event at each blank line that ends one.

    Follows the WHATWG rules that matter here: `:` lines are comments (heartbeats), a space after
    the colon is dropped, `data` lines join with newlines, `retry` is ignored.
    """

    def __init__(self) -> None:
        self._id = ""
        self._type = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data:
                self._type = ""
                return None
            event = ServerEvent(
                id=self._id, type=self._type or "message", data="\n".join(self._data)
            )
            self._type, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            self._id = value
        return None
