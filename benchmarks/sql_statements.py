"""Client CPU per autocommit statement on PostgreSQL: dropsim's shard queries vs asyncpg's pool.

    python benchmarks/sql_statements.py [--statements 4000] [--callers 1 32] [--url URL]

Every order makes autocommit statements (its row, its payment's row, the charge's acceptance),
so what each costs the server's one core matters. Three ways to run the same INSERT, measured in
turn in one run (ratios matter, these machines are noisy):

    asyncpg pool     `pool.execute`: a connection acquired from and released to the pool per
                     statement (reset query off, as dropsim's pools have it) - the baseline
    dropsim shard    `db.shard(0).execute`: the port, which keeps a few connections out of the
                     pool between statements (`backends/postgres.py`)
    one connection   `connection.execute` on a connection held throughout - the floor

`--callers` runs the statements from that many concurrent tasks (1 = one after another). The
URL defaults to DROPSIM_TEST_POSTGRES_URL; the benchmark uses a table of its own in shard 0
and drops it afterwards. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import uvloop
from rich.console import Console
from rich.table import Table

from dropsim.backends.postgres import PostgresDatabase, _SessionlessConnection, numbered

TABLE = f"bench_statements_{uuid.uuid4().hex[:8]}"
INSERT = f"INSERT INTO {TABLE} (id, user_id, quantity, status) VALUES (?, ?, ?, ?)"

Statement = Callable[[tuple[Any, ...]], Awaitable[Any]]


def _row() -> tuple[Any, ...]:
    return (uuid.uuid4().hex, "usr_bench", 1, "pending")


async def _cpu_per_statement(statement: Statement, statements: int, callers: int) -> float:
    """Microseconds of this process's CPU per statement."""

    async def caller(count: int) -> None:
        for _ in range(count):
            await statement(_row())

    await asyncio.gather(*(caller(50) for _ in range(callers)))  # warm: statement caches
    started = time.process_time()
    await asyncio.gather(*(caller(statements // callers) for _ in range(callers)))
    return (time.process_time() - started) / (statements // callers * callers) * 1e6


async def main(url: str, statements: int, callers_list: list[int]) -> None:
    db = await PostgresDatabase.connect(url, 1)
    shard_url = url.replace("{shard}", "0")
    pool = await asyncpg.create_pool(
        shard_url, min_size=1, max_size=10, connection_class=_SessionlessConnection
    )
    held = await asyncpg.connect(shard_url)
    insert = numbered(INSERT)
    try:
        await held.execute(
            f"CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, user_id TEXT, quantity INT, status TEXT)"
        )
        ways: dict[str, Statement] = {
            "asyncpg pool": lambda row: pool.execute(insert, *row),
            "dropsim shard": lambda row: db.shard(0).execute(INSERT, row),
            "one connection": lambda row: held.execute(insert, *row),
        }
        table = Table(title=f"client CPU per INSERT, {statements:,} statements per figure")
        table.add_column("callers", justify="right")
        for name in ways:
            table.add_column(f"{name} us", justify="right")
        table.add_column("shard / pool", justify="right")
        for callers in callers_list:
            # one held connection takes one statement at a time
            serialised = {**ways, "one connection": _serialised(ways["one connection"])}
            figures = {
                name: await _cpu_per_statement(way, statements, callers)
                for name, way in (ways if callers == 1 else serialised).items()
            }
            table.add_row(
                str(callers),
                *(f"{figure:.0f}" for figure in figures.values()),
                f"{figures['dropsim shard'] / figures['asyncpg pool']:.0%}",
            )
        Console().print(table)
    finally:
        await held.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await held.close()
        await pool.close()
        await db.close()


def _serialised(statement: Statement) -> Statement:
    lock = asyncio.Lock()

    async def run(row: tuple[Any, ...]) -> Any:
        async with lock:
            return await statement(row)

    return run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--statements", type=int, default=4000)
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--url",
        default=os.environ.get(
            "DROPSIM_TEST_POSTGRES_URL",
            "postgresql://postgres@127.0.0.1:5432/dropsim_bench_{shard}",
        ),
    )
    args = parser.parse_args()
    uvloop.run(main(args.url, args.statements, args.callers))
