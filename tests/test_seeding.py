"""Seeding a celebrity: deterministic fans, exact counts, resumable, and admin-only over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dropsim.accounts.models import Role
from dropsim.app import MIGRATIONS, Services, build_services, create_app
from dropsim.backends import Backends
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.settings import Settings


@pytest.fixture
async def services(backend_settings: Settings) -> AsyncIterator[Services]:
    backends = await Backends.open(backend_settings)
    try:
        await backends.db.migrate(MIGRATIONS)
        yield build_services(backend_settings, backends)
    finally:
        await backends.close()


async def test_seeded_followers_are_counted_listed_and_not_added_twice(
    services: Services,
) -> None:
    creator_id = await services.seeder.seed_creator("megastar", "Mega Star")
    assert await services.seeder.seed_creator("megastar", "Mega Star") == creator_id
    assert (await services.accounts.user(creator_id)).role is Role.CREATOR

    done: list[int] = []
    added = await services.seeder.seed_followers(
        creator_id, 2_500, batch=1_000, progress=done.append
    )
    assert added == 2_500
    assert done == [1_000, 2_000, 2_500]
    assert await services.follows.follower_count(creator_id) == 2_500

    listed: list[str] = []
    while page := await services.follows.followers(creator_id, listed[-1] if listed else "", 700):
        listed.extend(follower.user_id for follower in page)
    assert listed == [fan_id("megastar", n) for n in range(2_500)]

    fan = await services.accounts.user(fan_id("megastar", 1_234))
    assert (fan.role, fan.handle, fan.email) == (Role.BUYER, "megastar-fan0001234", None)
    assert await services.follows.following_ids(fan.id) == [creator_id]

    # a re-run adds nothing; a resumed run adds only the fans past the end
    assert await services.seeder.seed_followers(creator_id, 2_500, batch=1_000) == 0
    assert await services.seeder.seed_followers(creator_id, 1_000, start=2_000, batch=300) == 500
    assert await services.follows.follower_count(creator_id) == 3_000


@pytest.fixture
async def client(backend_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(backend_settings)) as test_client:
        yield test_client


def bearer(settings: Settings, user_id: str, role: Role) -> dict[str, str]:
    token = TokenIssuer(settings.signing_secret(), 3600).issue(user_id, role)
    return {"Authorization": f"Bearer {token}"}


async def test_admin_seeds_over_http(
    client: AsyncTestClient[Any], backend_settings: Settings
) -> None:
    admin = bearer(backend_settings, "admin", Role.ADMIN)
    created = await client.post(
        "/v1/admin/seed/creators", json={"handle": "popstar", "display_name": "Pop"}, headers=admin
    )
    assert created.status_code == 200, created.text
    creator_id = created.json()["creator_id"]

    body = {"creator_id": creator_id, "start": 0, "count": 300}
    first = await client.post("/v1/admin/seed/followers", json=body, headers=admin)
    assert first.status_code == 200, first.text
    assert first.json() == {"added": 300, "creator_id": creator_id}
    again = await client.post("/v1/admin/seed/followers", json=body, headers=admin)
    assert again.json()["added"] == 0

    count = await client.get(f"/v1/creators/{creator_id}/followers/count")
    assert count.json() == {"creator_id": creator_id, "followers": 300}

    too_many = {"creator_id": creator_id, "count": 200_001}
    refused = await client.post("/v1/admin/seed/followers", json=too_many, headers=admin)
    assert refused.status_code == 400
    unknown = {"creator_id": "usr_nobody", "count": 10}
    missing = await client.post("/v1/admin/seed/followers", json=unknown, headers=admin)
    assert missing.status_code == 404


@pytest.mark.parametrize("role", [Role.BUYER, Role.CREATOR])
async def test_only_admins_may_seed(
    client: AsyncTestClient[Any], backend_settings: Settings, role: Role
) -> None:
    headers = bearer(backend_settings, "usr_someone", role)
    creators = await client.post(
        "/v1/admin/seed/creators", json={"handle": "sneaky", "display_name": "S"}, headers=headers
    )
    followers = await client.post(
        "/v1/admin/seed/followers", json={"creator_id": "usr_x", "count": 5}, headers=headers
    )
    assert (creators.status_code, followers.status_code) == (403, 403)
    assert (await client.post("/v1/admin/seed/creators", json={})).status_code == 401
