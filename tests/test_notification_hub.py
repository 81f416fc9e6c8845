"""The notification hub and feed in isolation: routing by the local index, follow changes while
connected, skipping what a resuming client already saw, and closing a stream that fell behind."""

from __future__ import annotations

import json
import time

from dropsim.eventlog import LogEntry
from dropsim.notifications.feed import EventFeed
from dropsim.notifications.frames import Frame
from dropsim.notifications.hub import MAX_QUEUED_FRAMES, Hub, Subscriber
from dropsim.notifications.stock import StockUpdates


async def _no_stock(_: str) -> None:
    return None


def feed_for(hub: Hub) -> EventFeed:
    stock = StockUpdates(hub, _no_stock, interval_seconds=1.0)
    return EventFeed(None, hub, stock)  # type: ignore[arg-type]  # deliver() never reads the log


def entry(event_id: str, event_type: str, **data: object) -> LogEntry:
    return LogEntry(event_id, event_type, time.time(), json.dumps(data))


def queued(subscriber: Subscriber) -> list[str]:
    frames: list[Frame] = list(subscriber._frames)
    return [
        line.split(": ", 1)[1]
        for f in frames
        for line in f.encoded.decode().splitlines()
        if line.startswith("id: ")
    ]


def test_alerts_go_to_connected_followers_and_watchers_once() -> None:
    hub = Hub()
    fan = Subscriber("u1", creators=["c1"], drops=["d1"])  # follows and watches: one frame
    other_fan = Subscriber("u2", creators=["c1"], drops=[])
    stranger = Subscriber("u3", creators=["c9"], drops=[])
    for subscriber in (fan, other_fan, stranger):
        hub.attach(subscriber)
    feed_for(hub).deliver(entry("5-0", "drop.went_live", drop_id="d1", creator_id="c1"))
    assert queued(fan) == ["5-0"]
    assert queued(other_fan) == ["5-0"]
    assert queued(stranger) == []
    assert hub.position == "5-0"


def test_order_outcomes_reach_only_their_buyer() -> None:
    hub = Hub()
    buyer, other = Subscriber("u1", [], []), Subscriber("u2", [], [])
    hub.attach(buyer)
    hub.attach(other)
    feed_for(hub).deliver(entry("7-0", "order.confirmed", order_id="o", drop_id="d", user_id="u1"))
    assert queued(buyer) == ["7-0"]
    assert queued(other) == []


def test_following_while_connected_files_the_stream_under_the_creator() -> None:
    hub = Hub()
    fan = Subscriber("u1", creators=[], drops=[])
    hub.attach(fan)
    feed = feed_for(hub)
    feed.deliver(entry("1-0", "creator.followed", creator_id="c1", user_id="u1"))
    feed.deliver(entry("2-0", "drop.went_live", drop_id="d1", creator_id="c1"))
    feed.deliver(entry("3-0", "creator.unfollowed", creator_id="c1", user_id="u1"))
    feed.deliver(entry("4-0", "drop.went_live", drop_id="d2", creator_id="c1"))
    assert queued(fan) == ["2-0"]


def test_a_resuming_stream_skips_events_it_saw_through_another_process() -> None:
    hub = Hub()
    fan = Subscriber("u1", creators=["c1"], drops=[])
    fan.resume_after = (20, 0)
    hub.attach(fan)
    feed = feed_for(hub)
    for event_id in ("10-0", "20-0", "30-0"):
        feed.deliver(entry(event_id, "drop.went_live", drop_id=event_id, creator_id="c1"))
    assert queued(fan) == ["30-0"]
    assert fan.resume_after is None


def test_detached_streams_get_nothing_and_leave_no_index_entries() -> None:
    hub = Hub()
    fan = Subscriber("u1", creators=["c1"], drops=["d1"])
    hub.attach(fan)
    hub.detach(fan)
    feed_for(hub).deliver(entry("1-0", "drop.went_live", drop_id="d1", creator_id="c1"))
    assert queued(fan) == []
    assert len(hub) == 0
    assert hub.watchers("d1") == set()


async def test_a_stream_that_falls_too_far_behind_is_closed() -> None:
    subscriber = Subscriber("u1", [], [])
    for n in range(MAX_QUEUED_FRAMES + 1):
        subscriber.push(Frame(b": x\r\n\r\n", f"{n}-0"))
    assert await subscriber.next_frames() is None
