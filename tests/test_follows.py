"""The follow service: idempotent follow/unfollow, both copies and the count in step, paging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from litestar.testing import AsyncTestClient

from dropsim.accounts.models import Role, User
from dropsim.app import MIGRATIONS, Services, build_services, create_app
from dropsim.backends import Backends
from dropsim.errors import Conflict, InvalidRequest, NotFound
from dropsim.follows.store import FollowStore, PairLock, pair_lock_key
from dropsim.gateway.tokens import Principal
from dropsim.settings import Settings
from tests.apiclient import bearer, sign_up
from tests.apiclient import make_creator as sign_up_creator


@pytest.fixture
async def backends(backend_settings: Settings) -> AsyncIterator[Backends]:
    opened = await Backends.open(backend_settings)
    try:
        await opened.db.migrate(MIGRATIONS)
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def services(backend_settings: Settings, backends: Backends) -> Services:
    return build_services(backend_settings, backends)


async def make_creator(services: Services, handle: str) -> str:
    user_id = f"usr_{handle}"
    await services.accounts.add_seeded_users(
        [User(id=user_id, handle=handle, role=Role.BUYER, created_at=time.time())]
    )
    creator = await services.creators.become_creator(
        Principal(user_id=user_id, role=Role.BUYER), handle, handle.title(), ""
    )
    return creator.id


async def all_followers(services: Services, creator_id: str, page: int) -> list[str]:
    """Every follower id, walking the keyset pages of size `page`."""
    seen: list[str] = []
    while True:
        found = await services.follows.followers(creator_id, seen[-1] if seen else "", page)
        seen.extend(follower.user_id for follower in found)
        if len(found) < page:
            return seen


async def event_types(services: Services) -> list[str]:
    return [
        envelope.type
        for envelope in await services.events.read_after()
        if envelope.type.startswith("creator.") and envelope.type != "creator.registered"
    ]


async def test_follow_and_unfollow_are_idempotent(services: Services) -> None:
    star = await make_creator(services, "star")
    follows = services.follows

    first = await follows.follow("usr_ada", star)
    again = await follows.follow("usr_ada", star)
    assert (first.following, first.follower_count) == (True, 1)
    assert again == first
    assert await follows.is_following("usr_ada", star)
    assert await follows.following_ids("usr_ada") == [star]
    assert [f.user_id for f in await follows.followers(star, "", 10)] == ["usr_ada"]
    assert await follows.follower_count(star) == 1

    gone = await follows.unfollow("usr_ada", star)
    gone_again = await follows.unfollow("usr_ada", star)
    assert (gone.following, gone.follower_count) == (False, 0)
    assert gone_again == gone
    assert not await follows.is_following("usr_ada", star)
    assert await follows.following_ids("usr_ada") == []
    assert await follows.followers(star, "", 10) == []
    assert await follows.follower_count(star) == 0
    # one event per real change, none for the repeats
    assert await event_types(services) == ["creator.followed", "creator.unfollowed"]


async def test_both_directions_and_counts_agree(services: Services) -> None:
    stars = [await make_creator(services, f"star{i}") for i in range(3)]
    users = [f"usr_fan{i:02d}" for i in range(12)]
    for index, user_id in enumerate(users):
        for star_index, star in enumerate(stars):
            if (index + star_index) % 3 != 0:
                await services.follows.follow(user_id, star)
    for user_id in users[:4]:
        await services.follows.unfollow(user_id, stars[1])

    by_creator = {
        (user_id, star) for star in stars for user_id in await all_followers(services, star, 100)
    }
    by_follower = {
        (user_id, star)
        for user_id in users
        for star in await services.follows.following_ids(user_id)
    }
    assert by_creator == by_follower
    assert len(by_creator) == 24 - sum(1 for i in range(4) if (i + 1) % 3 != 0)
    for star in stars:
        followers = [user_id for user_id, followed in by_creator if followed == star]
        assert await services.follows.follower_count(star) == len(followers)


async def test_pages_walk_every_follower_and_followed_creator_once(services: Services) -> None:
    stars = [await make_creator(services, f"idol{i}") for i in range(7)]
    fans = [f"usr_fan{i:02d}" for i in range(23)]
    for fan in fans:
        await services.follows.follow(fan, stars[0])
    for star in stars:
        await services.follows.follow(fans[0], star)

    assert await all_followers(services, stars[0], 5) == sorted(fans)

    walked: list[str] = []
    while True:
        page = await services.follows.following(fans[0], walked[-1] if walked else "", 3)
        walked.extend(following.creator_id for following in page)
        if len(page) < 3:
            break
    assert walked == sorted(stars)


async def test_unknown_creator_is_not_found(services: Services) -> None:
    with pytest.raises(NotFound):
        await services.follows.follow("usr_ada", "usr_nobody")
    with pytest.raises(NotFound):
        await services.follows.unfollow("usr_ada", "usr_nobody")
    with pytest.raises(NotFound):
        await services.follows.followers("usr_nobody", "", 10)
    with pytest.raises(NotFound):
        await services.follows.follower_count("usr_nobody")
    assert await services.follows.following_ids("usr_ada") == []


async def test_following_yourself_is_refused(services: Services) -> None:
    star = await make_creator(services, "narcissus")
    with pytest.raises(InvalidRequest):
        await services.follows.follow(star, star)
    assert await services.follows.follower_count(star) == 0


async def test_bulk_add_counts_new_edges_once(services: Services) -> None:
    star = await make_creator(services, "celebrity")
    fans = [f"usr_bulk{i:04d}" for i in range(500)]
    await services.follows.follow(fans[450], star)  # one follows the normal way first

    assert await services.follows.add_followers_in_bulk(star, fans[:300], time.time()) == 300
    overlapping = [*fans[200:], star]  # the creator itself is skipped, not an error
    assert await services.follows.add_followers_in_bulk(star, overlapping, time.time()) == 199
    assert await services.follows.add_followers_in_bulk(star, fans, time.time()) == 0

    assert await services.follows.follower_count(star) == 500
    assert await all_followers(services, star, 128) == fans
    for fan in (fans[0], fans[299], fans[450], fans[499]):
        assert await services.follows.following_ids(fan) == [star]


async def test_repeating_a_follow_heals_a_half_written_pair(
    services: Services, backends: Backends
) -> None:
    star = await make_creator(services, "phoenix")
    # what a crash between the two writes leaves: the by-creator row without its copy
    await FollowStore(backends.db).add_follower(star, "usr_ada", time.time())
    await FollowStore(backends.db).add_follower(star, "usr_bob", time.time())
    assert await services.follows.following_ids("usr_ada") == []

    state = await services.follows.follow("usr_ada", star)
    assert (state.following, state.follower_count) == (True, 2)
    assert await services.follows.following_ids("usr_ada") == [star]
    assert await event_types(services) == ["creator.followed"]  # the crashed one never announced

    assert await services.follows.repair_pair("usr_bob", star) is True
    assert await services.follows.repair_pair("usr_bob", star) is False
    assert await services.follows.following_ids("usr_bob") == [star]


async def test_a_pair_is_changed_by_one_process_at_a_time(
    backend_settings: Settings, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two sets of services over one KV store and one database: two server processes, in effect
    one, two = (
        build_services(backend_settings, backends),
        build_services(backend_settings, backends),
    )
    star = await make_creator(one, "contested")
    copy_follow = FollowStore.add_following

    async def stalled(store: FollowStore, user_id: str, creator_id: str, at: float) -> bool:
        await asyncio.sleep(0.3)  # a follow stalls between its by-creator and by-follower writes
        return await copy_follow(store, user_id, creator_id, at)

    monkeypatch.setattr(FollowStore, "add_following", stalled)
    follow = asyncio.create_task(one.follows.follow("usr_ada", star))
    await asyncio.sleep(0.1)  # the unfollow arrives at the other process mid-follow
    unfollowed = await two.follows.unfollow("usr_ada", star)
    await follow

    # the unfollow waited for the whole follow, then undid both halves
    assert (unfollowed.following, unfollowed.follower_count) == (False, 0)
    assert not await one.follows.is_following("usr_ada", star)
    assert await one.follows.following_ids("usr_ada") == []


async def test_a_holder_whose_lease_ran_out_does_not_free_the_next_holder(
    backends: Backends,
) -> None:
    key = pair_lock_key("usr_ada", "usr_star")
    late = PairLock(backends.kv, lease_ms=50).hold("usr_ada", "usr_star")
    await late.__aenter__()
    await asyncio.sleep(0.1)  # the lease expires while the holder is stalled
    async with PairLock(backends.kv).hold("usr_ada", "usr_star"):
        await late.__aexit__(None, None, None)
        assert await backends.kv.get(key) is not None  # still held by the second holder
        with pytest.raises(Conflict):
            async with PairLock(backends.kv, wait_seconds=0.05).hold("usr_ada", "usr_star"):
                pass
    assert await backends.kv.get(key) is None


async def test_routes_answer_problems_not_errors(backend_settings: Settings) -> None:
    async with AsyncTestClient(create_app(backend_settings)) as client:
        star, star_token = await sign_up_creator(client, "routestar")
        _, token = await sign_up(client, "routefan")
        auth = bearer(token)

        followed = await client.put(f"/v1/me/following/{star}", headers=auth)
        assert followed.json() == {"creator_id": star, "following": True, "follower_count": 1}
        page = await client.get("/v1/me/following", headers=auth)
        assert [item["creator_id"] for item in page.json()["items"]] == [star]
        count = await client.get(f"/v1/creators/{star}/followers/count")  # public
        assert count.json() == {"creator_id": star, "followers": 1}
        unfollowed = await client.delete(f"/v1/me/following/{star}", headers=auth)
        assert unfollowed.json() == {"creator_id": star, "following": False, "follower_count": 0}

        for method, path, headers, status in [
            ("PUT", "/v1/me/following/usr_nobody", auth, 404),
            ("DELETE", "/v1/me/following/usr_nobody", auth, 404),
            ("GET", "/v1/creators/usr_nobody/followers", auth, 404),
            ("GET", "/v1/creators/usr_nobody/followers/count", {}, 404),
            ("PUT", f"/v1/me/following/{star}", bearer(star_token), 400),
            ("GET", f"/v1/creators/{star}/followers?cursor=%25%25", auth, 400),
            ("GET", f"/v1/creators/{star}/followers?limit=0", auth, 400),
            ("GET", f"/v1/creators/{star}/followers", {}, 401),
            ("PUT", f"/v1/me/following/{star}", {}, 401),
        ]:
            response = await client.request(method, path, headers=headers)
            assert response.status_code == status, (method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
