"""Fan-out by the local index: a celebrity with 100,000 followers, 1,000 of them connected ->
exactly those 1,000 get the drop alert, once; connected strangers get nothing."""

from __future__ import annotations

import asyncio
import random
from contextlib import AsyncExitStack

import aiohttp
import httpx
import pytest

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_drop
from tests.rush import admin_token
from tests.sse import Stream, open_stream

FOLLOWERS = 100_000
CONNECTED_FOLLOWERS = 1_000
CONNECTED_STRANGERS = 100


@pytest.mark.slow
async def test_drop_alert_reaches_exactly_the_connected_followers(
    backend_settings: Settings,
) -> None:
    handle = "celeb"
    issuer = TokenIssuer(backend_settings.signing_secret(), 3600)
    with ServerProcess(backend_settings) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            admin = bearer(admin_token(server.settings))
            seeded = await client.post(
                "/v1/admin/seed/creators",
                json={"handle": handle, "display_name": "Celebrity"},
                headers=admin,
            )
            assert seeded.status_code == 200, seeded.text
            creator_id = seeded.json()["creator_id"]
            followed = await client.post(
                "/v1/admin/seed/followers",
                json={"creator_id": creator_id, "count": FOLLOWERS},
                headers=admin,
            )
            assert followed.json()["added"] == FOLLOWERS
            creator = issuer.issue(f"usr_{handle}", Role.CREATOR)

            fans = random.Random(5).sample(range(FOLLOWERS), CONNECTED_FOLLOWERS)
            followers = {
                fan_id(handle, n): issuer.issue(fan_id(handle, n), Role.BUYER) for n in fans
            }
            strangers = {
                f"usr_stranger{n}": issuer.issue(f"usr_stranger{n}", Role.BUYER)
                for n in range(CONNECTED_STRANGERS)
            }
            connector = aiohttp.TCPConnector(limit=0)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                AsyncExitStack() as open_,
            ):

                async def connect(token: str) -> Stream:
                    return await open_.enter_async_context(
                        open_stream(session, server.url, token=token)
                    )

                follower_streams = await asyncio.gather(*map(connect, followers.values()))
                stranger_streams = await asyncio.gather(*map(connect, strangers.values()))

                drop = await make_drop(client, creator, starts_in=1.0, stock=100)
                alerts = await asyncio.gather(
                    *(stream.wait_for("drop.went_live", within=30) for stream in follower_streams)
                )
                await asyncio.sleep(1.0)  # time for a duplicate or a stray alert to show up

                assert all(len(stream.events("drop.went_live")) == 1 for stream in follower_streams)
                assert {alert.envelope()["data"]["drop_id"] for [alert] in alerts} == {drop["id"]}
                assert len({alert.id for [alert] in alerts}) == 1  # one event, many streams
                assert all(stream.events("drop.went_live") == [] for stream in stranger_streams)
