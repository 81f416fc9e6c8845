"""A drop's lifecycle runs on the clock: live at `starts_at`, ended at `ends_at`, unasked, once."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from dropsim.app import Services, create_app
from dropsim.backends import open_kv
from dropsim.creators.models import DropStatus, can_move, due_status
from dropsim.eventlog import EventLog
from dropsim.events import Envelope
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import make_creator, make_drop

ON_TIME = 0.100  # seconds: the promise is "live within 100 ms of starts_at"


def transitions_of(events: list[Envelope], drop_id: str) -> list[Envelope]:
    return [
        event
        for event in events
        if event.data.get("drop_id") == drop_id and event.type in {"drop.went_live", "drop.ended"}
    ]


async def all_events(app: Litestar, settings: Settings) -> list[Envelope]:
    """The event log as the app wrote it (a real Redis is read with a client of this loop)."""
    if settings.embedded_kv:
        services: Services = app.state.services
        return await services.events.read_after("0-0")
    kv: Any = await open_kv(settings.kv_url)
    try:
        return await EventLog(kv).read_after("0-0")
    finally:
        await kv.aclose()


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize(
    ("status", "now", "expected"),
    [
        (DropStatus.SCHEDULED, 5, DropStatus.SCHEDULED),
        (DropStatus.SCHEDULED, 10, DropStatus.LIVE),
        (DropStatus.SCHEDULED, 20, DropStatus.ENDED),  # the whole window passed while down
        (DropStatus.LIVE, 19.9, DropStatus.LIVE),
        (DropStatus.LIVE, 20, DropStatus.ENDED),
        (DropStatus.SOLD_OUT, 25, DropStatus.ENDED),
        (DropStatus.CANCELLED, 15, DropStatus.CANCELLED),
        (DropStatus.ENDED, 25, DropStatus.ENDED),
    ],
)
def test_due_status(status: DropStatus, now: float, expected: DropStatus) -> None:
    assert due_status(status, starts_at=10, ends_at=20, now=now) is expected
    assert expected is status or can_move(status, expected)


def test_finished_drops_never_move_again() -> None:
    for final in (DropStatus.ENDED, DropStatus.CANCELLED):
        assert not any(can_move(final, target) for target in DropStatus)


async def test_drop_goes_live_and_ends_on_time_without_a_request(
    backend_settings: Settings,
) -> None:
    app = create_app(backend_settings)
    async with AsyncTestClient(app) as client:
        _, token = await make_creator(client)
        drop = await make_drop(client, token, starts_in=1.0, lasts=1.0)
        await asyncio.sleep(2.4)  # no request arrives while the clock works
        events = transitions_of(await all_events(app, backend_settings), drop["id"])
        final = (await client.get(f"/v1/drops/{drop['id']}")).json()

    assert [event.type for event in events] == ["drop.went_live", "drop.ended"]
    went_live, ended = events
    assert 0 <= went_live.at - epoch(drop["starts_at"]) < ON_TIME
    assert 0 <= ended.at - epoch(drop["ends_at"]) < ON_TIME
    assert final["status"] == "ended"


async def test_two_servers_on_real_backends_move_each_drop_once(
    real_backend_settings: Settings,
) -> None:
    with (
        ServerProcess(real_backend_settings) as first,
        ServerProcess(real_backend_settings) as second,
    ):
        async with httpx.AsyncClient(base_url=first.url) as client:
            _, token = await make_creator(client)
            drops = [await make_drop(client, token, starts_in=1.0, lasts=1.0) for _ in range(5)]
        await asyncio.sleep(2.6)
        async with httpx.AsyncClient(base_url=second.url) as client:
            statuses = {(await client.get(f"/v1/drops/{d['id']}")).json()["status"] for d in drops}

    events = await all_events(create_app(real_backend_settings), real_backend_settings)
    assert statuses == {"ended"}
    for drop in drops:
        assert [e.type for e in transitions_of(events, drop["id"])] == [
            "drop.went_live",
            "drop.ended",
        ]
