"""How fast a celebrity gets its followers: seeds N fans of one creator, prints edges/s per backend.

    python benchmarks/seed_follows.py --edges 1000000
    python benchmarks/seed_follows.py --edges 1000000 --postgres-url 'postgresql://.../db_{shard}'

Each edge is the fan's `users` row plus the edge by creator, the edge by follower and the count.
SQLite runs in a fresh temporary directory; PostgreSQL uses a new creator handle per run, so it
never touches existing rows unless `--reset` (drops every table in the shard databases) is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from dropsim.app import MIGRATIONS, build_services
from dropsim.backends import Backends
from dropsim.settings import Settings
from dropsim.testing import embedded_settings


async def seed(settings: Settings, edges: int, batch: int, handle: str) -> tuple[float, int, int]:
    """(seconds, edges added, follower count afterwards) for one celebrity on `settings`."""
    backends = await Backends.open(settings)
    try:
        await backends.db.migrate(MIGRATIONS)
        services = build_services(settings, backends)
        creator_id = await services.seeder.seed_creator(handle, handle.title())
        started = time.perf_counter()
        added = await services.seeder.seed_followers(creator_id, edges, batch=batch)
        elapsed = time.perf_counter() - started
        return elapsed, added, await services.follows.follower_count(creator_id)
    finally:
        await backends.close()


async def reset_postgres(url: str, shards: int) -> None:
    from dropsim.backends.postgres import PostgresDatabase

    db = await PostgresDatabase.connect(url, shards)
    try:
        for index in range(shards):
            await db.shard(index).execute("DROP SCHEMA IF EXISTS public CASCADE")
            await db.shard(index).execute("CREATE SCHEMA public")
    finally:
        await db.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DROPSIM_TEST_POSTGRES_URL"),
        help="also run on these PostgreSQL shards (default: $DROPSIM_TEST_POSTGRES_URL)",
    )
    parser.add_argument("--reset", action="store_true", help="drop every PostgreSQL table first")
    args = parser.parse_args()

    table = Table(title=f"seeding {args.edges:,} followers of one creator ({args.shards} shards)")
    for column in ("backend", "seconds", "edges/s", "added", "count"):
        table.add_column(column, justify="left" if column == "backend" else "right")

    def record(name: str, result: tuple[float, int, int]) -> None:
        elapsed, added, count = result
        rate = args.edges / elapsed if elapsed else 0.0
        table.add_row(name, f"{elapsed:.2f}", f"{rate:,.0f}", f"{added:,}", f"{count:,}")

    with tempfile.TemporaryDirectory() as directory:
        settings = embedded_settings(Path(directory), shards=args.shards)
        record("sqlite (WAL)", await seed(settings, args.edges, args.batch, "celebrity"))
    if args.postgres_url:
        if args.reset:
            await reset_postgres(args.postgres_url, args.shards)
        with tempfile.TemporaryDirectory() as directory:
            settings = embedded_settings(
                Path(directory), db_url=args.postgres_url, shards=args.shards
            )
            handle = f"celeb{int(time.time())}"
            record("postgresql", await seed(settings, args.edges, args.batch, handle))
    Console().print(table)


if __name__ == "__main__":
    asyncio.run(main())
