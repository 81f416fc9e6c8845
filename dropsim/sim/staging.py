"""Staging a run: seed the world through the admin routes, schedule the drop, and write the
world file (tokens, planned arrivals) that the load processes read."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dropsim.accounts.models import Role
from dropsim.errors import ConfigurationError
from dropsim.gateway.tokens import TokenIssuer
from dropsim.seeding import fan_id
from dropsim.settings import Settings
from dropsim.sim.scenario import Scenario
from dropsim.sim.world import Cast, World, plan_arrivals

SEED_BATCH = 20_000
TOKEN_TTL_S = 6 * 3600


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def call(api: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    response = api.request(method, path, **kwargs)
    if response.status_code >= 400:
        raise ConfigurationError(
            f"server refused {method} {path}: {response.status_code} {response.text[:300]}"
        )
    return response.json()


def seed_world(api: httpx.Client, scenario: Scenario, console: Console) -> str:
    """The celebrity and their followers (idempotent: a real backend keeps them across runs)."""
    world = scenario.world
    creator_id = str(
        call(
            api,
            "POST",
            "/v1/admin/seed/creators",
            json={"handle": world.celebrity, "display_name": world.celebrity.capitalize()},
        )["creator_id"]
    )
    with Progress(
        TextColumn("seeding @{task.fields[handle]} followers"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("seed", total=world.followers, handle=world.celebrity)
        for start in range(0, world.followers, SEED_BATCH):
            count = min(SEED_BATCH, world.followers - start)
            call(
                api,
                "POST",
                "/v1/admin/seed/followers",
                json={"creator_id": creator_id, "start": start, "count": count},
            )
            progress.update(task, completed=start + count)
    console.print(f"seeded @{world.celebrity} with {world.followers:,} followers")
    return creator_id


def schedule_drop(
    api: httpx.Client,
    scenario: Scenario,
    settings: Settings,
    creator_id: str,
    url: str,
    run_dir: Path,
) -> World:
    """Schedule the drop and write the world file the load processes read."""
    issuer = TokenIssuer(settings.signing_secret(), TOKEN_TTL_S)
    creator = bearer(issuer.issue(creator_id, Role.CREATOR))
    plan = scenario.drop
    product = call(
        api, "POST", "/v1/products", json={"name": f"{scenario.name} drop"}, headers=creator
    )
    go_live_at = time.time() + plan.go_live_after_seconds
    starts = datetime.fromtimestamp(go_live_at, UTC)
    ends = datetime.fromtimestamp(go_live_at + plan.open_seconds, UTC)
    drop = call(
        api,
        "POST",
        "/v1/drops",
        headers=creator,
        json={
            "product_id": product["id"],
            "stock": plan.stock,
            "price_cents": plan.price_cents,
            "per_user_limit": plan.per_user_limit,
            "starts_at": starts.isoformat(),
            "ends_at": ends.isoformat(),
        },
    )
    go_live_at = datetime.fromisoformat(drop["starts_at"]).timestamp()
    load = scenario.load
    handle, fans = scenario.world.celebrity, scenario.world.followers

    def tokens(user_ids: list[str]) -> list[str]:
        return [issuer.issue(user_id, Role.BUYER) for user_id in user_ids]

    # viewers and followers are taken from the end of the follower list, away from the buyers
    tail = [fan_id(handle, fans - 1 - index) for index in range(load.viewers.count)]
    togglers = [
        fan_id(handle, fans - 1 - load.viewers.count - index)
        for index in range(load.followers.count)
    ]
    world = World(
        url=url,
        drop_id=drop["id"],
        creator_id=creator_id,
        go_live_at=go_live_at,
        ends_at=go_live_at + load.duration_seconds,
        record_dir=str(run_dir / "load"),
        claims_dir=str(run_dir / "claims"),
        buyers=Cast(tokens([fan_id(handle, index) for index in range(load.rush.buyers)])),
        arrivals_s=plan_arrivals(
            load.rush.buyers, load.rush.arrival, load.rush.over_seconds, scenario.seed
        ),
        quantity=load.rush.quantity,
        replay_rate=load.rush.replay_rate,
        late_arrival_s=scenario.measurement.late_arrival_ms / 1000,
        order_timeout_s=load.duration_seconds,
        watchers=Cast(tokens([fan_id(handle, index) for index in range(load.watchers.count)])),
        viewers=Cast(tokens(tail), load.viewers.interval_seconds),
        followers=Cast(tokens(togglers), load.followers.interval_seconds),
        bots=Cast(
            tokens([f"usr_sim-bot{index}" for index in range(load.bots.count)]),
            load.bots.interval_seconds,
        ),
        seed=scenario.seed,
    )
    world.write(run_dir / "world.json")
    return world
