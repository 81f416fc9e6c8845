"""Two server processes on real Redis + PostgreSQL behave as one system for streams: an order
placed through one is confirmed on a stream held by the other, a ticket from one opens a stream
on the other, and a client that moves between them resumes without gaps or repeats."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import httpx

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, follow, make_creator, make_drop, sign_up
from tests.sse import open_stream, stream_ticket
from tests.test_notifications import STREAM_SETTINGS, wait_live


async def test_an_order_on_one_process_is_confirmed_on_a_stream_held_by_the_other(
    real_backend_settings: Settings,
) -> None:
    settings = real_backend_settings.model_copy(update=STREAM_SETTINGS)
    with ServerProcess(settings) as first, ServerProcess(settings) as second:
        async with (
            httpx.AsyncClient(base_url=first.url, timeout=30) as one,
            httpx.AsyncClient(base_url=second.url, timeout=30) as two,
            aiohttp.ClientSession() as session,
        ):
            creator_id, creator = await make_creator(one)
            _, buyer = await sign_up(one)
            await follow(two, buyer, creator_id)
            drop = await make_drop(one, creator, starts_in=1.0, stock=5)

            # a ticket issued by the first process opens a stream on the second
            async with open_stream(
                session, second.url, ticket=await stream_ticket(one, buyer)
            ) as held:
                [alert] = await held.wait_for("drop.went_live")
                await wait_live(drop)
                placed = await one.post(
                    f"/v1/drops/{drop['id']}/orders",
                    headers={**bearer(buyer), "Idempotency-Key": str(uuid.uuid4())},
                )
                assert placed.status_code == 201, placed.text
                [confirmed] = await held.wait_for("order.confirmed")
                assert confirmed.envelope()["data"]["order_id"] == placed.json()["id"]
                await asyncio.sleep(0.5)
                assert len(held.events("drop.went_live")) == 1  # once, not once per process

            # offline, then back through the other process: exactly what was missed
            later = await make_drop(one, creator, starts_in=0.5)
            await wait_live(later)
            await asyncio.sleep(0.5)
            async with open_stream(
                session, first.url, token=buyer, last_event_id=confirmed.id
            ) as resumed:
                [missed] = await resumed.wait_for("drop.went_live")
                assert missed.envelope()["data"]["drop_id"] == later["id"]
                await asyncio.sleep(0.5)
                assert [f.id for f in resumed.events()] == [missed.id]
                assert alert.id not in {f.id for f in resumed.events()}
