"""The local index of this process's streams: by user, by followed creator, by watched drop.

A drop going live looks up its creator here, so its cost grows with the followers connected to
this process, not with all of the creator's followers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from dropsim.notifications.frames import Frame, joined
from dropsim.notifications.routing import Audience

MAX_QUEUED_FRAMES = 1000
"""A stream this far behind is closed; its client reconnects and resumes from Last-Event-ID."""


WriteNow = Callable[[Frame], bool]
"""Writes a frame to the stream's connection from the caller's context, without waking the
stream's task (True), or declines because a write is still under way (False)."""


class Subscriber:
    """One open stream: what it listens to and the frames waiting to be written.

    A broadcast to ten thousand streams used to wake ten thousand tasks, each to make one write.
    So while the stream's task is parked with nothing queued, `push` writes the frame itself
    through `writer` (set by the stream response); otherwise the frame is queued in order and
    the task woken, as before.
    """

    __slots__ = (
        "_frames",
        "_waiter",
        "creators",
        "drops",
        "lagging",
        "resume_after",
        "user_id",
        "writer",
    )

    def __init__(self, user_id: str, creators: Iterable[str], drops: Iterable[str]) -> None:
        self.user_id = user_id
        self.creators = set(creators)
        self.drops = set(drops)
        self.lagging = False
        self.resume_after: tuple[int, int] | None = None
        """Live events up to this log id are skipped: the client had them before reconnecting."""
        self.writer: WriteNow | None = None
        self._frames: deque[Frame] = deque()
        self._waiter: asyncio.Future[None] | None = None
        """Pending while the stream's task is parked in `next_frames`, with nothing queued."""

    def listens_to(self, audience: Audience, key: str) -> bool:
        if audience is Audience.FOLLOWERS:
            return key in self.creators
        if audience is Audience.WATCHERS:
            return key in self.drops
        return key == self.user_id

    def push(self, frame: Frame) -> None:
        waiter = self._waiter
        parked = waiter is not None and not waiter.done()
        # written at once only when nothing is queued or in the task's hands: frames keep order
        if parked and not self._frames and self.writer is not None and self.writer(frame):
            return
        if len(self._frames) >= MAX_QUEUED_FRAMES:
            self.lagging = True
        else:
            self._frames.append(frame)
        if parked:
            assert waiter is not None
            waiter.set_result(None)

    async def next_frames(self) -> Frame | None:
        """Everything queued, as one frame; None once the stream fell too far behind."""
        while not self._frames:
            if self.lagging:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.lagging:
            return None
        frames = list(self._frames)
        self._frames.clear()
        return joined(frames)


class Hub:
    """Subscribers of this process, filed under every key they listen to."""

    def __init__(self) -> None:
        self._index: dict[Audience, dict[str, set[Subscriber]]] = {
            audience: {} for audience in Audience
        }
        self._all: set[Subscriber] = set()
        self.position = "0-0"
        """Id of the last log event delivered here; streams attached now get what follows."""

    def __len__(self) -> int:
        return len(self._all)

    def attach(self, subscriber: Subscriber) -> str:
        """File `subscriber`; return the position from which live delivery covers it (no await
        happens in between, so replay up to this id plus live delivery leaves no gap)."""
        self._all.add(subscriber)
        self._file(Audience.OWNER, subscriber.user_id, subscriber)
        for creator_id in subscriber.creators:
            self._file(Audience.FOLLOWERS, creator_id, subscriber)
        for drop_id in subscriber.drops:
            self._file(Audience.WATCHERS, drop_id, subscriber)
        return self.position

    def detach(self, subscriber: Subscriber) -> None:
        self._all.discard(subscriber)
        self._unfile(Audience.OWNER, subscriber.user_id, subscriber)
        for creator_id in subscriber.creators:
            self._unfile(Audience.FOLLOWERS, creator_id, subscriber)
        for drop_id in subscriber.drops:
            self._unfile(Audience.WATCHERS, drop_id, subscriber)

    def followed(self, user_id: str, creator_id: str) -> None:
        """A connected user followed a creator: their streams get its alerts from now on."""
        for subscriber in self._index[Audience.OWNER].get(user_id, ()):
            subscriber.creators.add(creator_id)
            self._file(Audience.FOLLOWERS, creator_id, subscriber)

    def unfollowed(self, user_id: str, creator_id: str) -> None:
        for subscriber in self._index[Audience.OWNER].get(user_id, ()):
            subscriber.creators.discard(creator_id)
            self._unfile(Audience.FOLLOWERS, creator_id, subscriber)

    def recipients(self, targets: list[tuple[Audience, str]]) -> Iterable[Subscriber]:
        """The subscribers that `targets` reach, each once."""
        index = self._index
        if len(targets) == 1:
            audience, key = targets[0]
            return index[audience].get(key, ())
        reached: set[Subscriber] = set()
        for audience, key in targets:
            reached.update(index[audience].get(key, ()))
        return reached

    def watchers(self, drop_id: str) -> set[Subscriber]:
        return self._index[Audience.WATCHERS].get(drop_id, set())

    def everyone(self) -> Iterable[Subscriber]:
        return self._all

    def _file(self, audience: Audience, key: str, subscriber: Subscriber) -> None:
        self._index[audience].setdefault(key, set()).add(subscriber)

    def _unfile(self, audience: Audience, key: str, subscriber: Subscriber) -> None:
        filed = self._index[audience].get(key)
        if filed is not None:
            filed.discard(subscriber)
            if not filed:
                del self._index[audience][key]
