"""Follow races over real HTTP: hundreds of follows and unfollows of the same pairs at once leave
the by-creator edges, the by-follower edges and the counts in agreement."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest

from dropsim.settings import Settings
from dropsim.testing import ServerProcess
from tests.apiclient import bearer, make_creator, sign_up


async def walk(client: httpx.AsyncClient, path: str, token: str, key: str) -> list[str]:
    """Every item's `key` across all pages of a listing (small pages, to cross page bounds)."""
    found: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        response = await client.get(path, params=params, headers=bearer(token))
        assert response.status_code == 200, response.text
        body = response.json()
        found.extend(item[key] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


@pytest.mark.slow  # a server process, twenty Argon2 sign-ups and a few hundred requests
async def test_racing_follows_and_unfollows_keep_both_copies_and_count_in_step(
    backend_settings: Settings,
) -> None:
    # with a shared KV store, two server processes race each other, not just two coroutines
    workers = 1 if backend_settings.embedded_kv else 2
    with ServerProcess(backend_settings, workers=workers) as server:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:
            users = await asyncio.gather(*(sign_up(client, f"racer{i}") for i in range(20)))
            creators = await asyncio.gather(*(make_creator(client, f"star{i}") for i in range(3)))

            # a few hot pairs get the race; every other user follows one creator once, alongside
            hot = [(user, creator) for user in users[:2] for creator in creators]
            rng = random.Random(20240501)
            calls = [(*rng.choice(hot), rng.choice(("PUT", "DELETE"))) for _ in range(300)]
            calls += [(user, creators[i % 3], "PUT") for i, user in enumerate(users[2:])]
            rng.shuffle(calls)
            responses = await asyncio.gather(
                *(
                    client.request(method, f"/v1/me/following/{creator_id}", headers=bearer(token))
                    for (_, token), (creator_id, _), method in calls
                )
            )
            for (_, _, method), response in zip(calls, responses, strict=True):
                assert response.status_code == 200, response.text
                assert response.json()["following"] is (method == "PUT")

            reader = users[0][1]
            by_creator = {
                (user_id, creator_id)
                for creator_id, _ in creators
                for user_id in await walk(
                    client, f"/v1/creators/{creator_id}/followers", reader, "user_id"
                )
            }
            by_follower = {
                (user_id, creator_id)
                for user_id, token in users
                for creator_id in await walk(client, "/v1/me/following", token, "creator_id")
            }
            assert by_creator == by_follower
            assert {(user[0], creators[i % 3][0]) for i, user in enumerate(users[2:])} <= by_creator
            for creator_id, _ in creators:
                count = await client.get(f"/v1/creators/{creator_id}/followers/count")
                expected = sum(1 for _, followed in by_creator if followed == creator_id)
                assert count.json() == {"creator_id": creator_id, "followers": expected}
