"""Schema migrations, applied the same way on every SQL backend: once per shard, in order."""

from __future__ import annotations

import time
from collections.abc import Sequence

from dropsim.ports import Migration, Queries


async def apply_pending(tx: Queries, migrations: Sequence[Migration]) -> list[str]:
    """Inside a shard's transaction: apply the migrations not recorded yet; return their names."""
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    applied = {row[0] for row in await tx.fetch_all("SELECT name FROM schema_migrations")}
    done = []
    for migration in migrations:
        if migration.name in applied:
            continue
        for statement in migration.statements:
            await tx.execute(statement)
        await tx.execute(
            "INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
            (migration.name, time.time()),
        )
        done.append(migration.name)
    return done
