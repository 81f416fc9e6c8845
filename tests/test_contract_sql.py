"""The `ShardedDatabase` contract, run on every SQL backend: what a service may rely on."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from conftest import POSTGRES_ENV, real_url, reset_postgres

from dropsim.backends import open_database
from dropsim.backends.sharding import jump_hash, key_hash, shard_of
from dropsim.ports import Migration, ShardedDatabase

SHARDS = 2

# The port passes driver errors through untranslated.
DRIVER_ERRORS = (sqlite3.Error, asyncpg.PostgresError)

ITEMS = Migration(
    "0001_items",
    [
        "CREATE TABLE IF NOT EXISTS items "
        "(id TEXT PRIMARY KEY, name TEXT NOT NULL, qty BIGINT NOT NULL, price DOUBLE PRECISION)",
        "CREATE INDEX IF NOT EXISTS items_by_name ON items (name)",
    ],
)
# A data migration: applied twice, its INSERT would hit the primary key and fail.
COUNTERS = Migration(
    "0002_counters",
    [
        "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        "INSERT INTO counters (name, n) VALUES ('seed', 0)",
    ],
)
NOTES = Migration(
    "0003_notes", ["CREATE TABLE IF NOT EXISTS notes (id BIGINT PRIMARY KEY, body TEXT NOT NULL)"]
)
MIGRATIONS = [ITEMS, COUNTERS, NOTES]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for SHARDS empty shards: SQLite files in a temporary dir, or cleaned PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shard-{{shard}}.db"
    url = real_url(POSTGRES_ENV, "PostgreSQL")
    reset_postgres(url, SHARDS)
    return url


@pytest.fixture
async def bare_db(database_url: str) -> AsyncIterator[ShardedDatabase]:
    """Opened through the factory, no migration applied."""
    database = await open_database(database_url, SHARDS)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def db(bare_db: ShardedDatabase) -> ShardedDatabase:
    await bare_db.migrate(MIGRATIONS)
    return bare_db


async def applied(db: ShardedDatabase, index: int) -> list[str]:
    rows = await db.shard(index).fetch_all("SELECT name FROM schema_migrations ORDER BY name")
    return [row[0] for row in rows]


# --- factory and migrations -------------------------------------------------------------------


async def test_factory_picks_the_backend_by_url(
    database_url: str, bare_db: ShardedDatabase
) -> None:
    assert bare_db.dialect == database_url.split(":")[0]
    assert bare_db.shard_count == SHARDS


async def test_migrate_creates_tables_on_every_shard_and_is_idempotent(
    bare_db: ShardedDatabase,
) -> None:
    await bare_db.migrate(MIGRATIONS)
    await bare_db.migrate(MIGRATIONS)  # a second run applies nothing (the seed INSERT would fail)

    for index in range(SHARDS):
        assert await applied(bare_db, index) == ["0001_items", "0002_counters", "0003_notes"]
        assert await bare_db.shard(index).fetch_all("SELECT name, n FROM counters") == [("seed", 0)]
        await bare_db.shard(index).execute(
            "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", ("a", "A", 1)
        )


async def test_concurrent_migrations_from_two_processes_apply_each_once(
    database_url: str, bare_db: ShardedDatabase
) -> None:
    other = await open_database(database_url, SHARDS)
    try:
        await asyncio.gather(bare_db.migrate(MIGRATIONS), other.migrate(MIGRATIONS))
    finally:
        await other.close()

    for index in range(SHARDS):
        counts = await bare_db.shard(index).fetch_all(
            "SELECT name, COUNT(*) FROM schema_migrations GROUP BY name ORDER BY name"
        )
        assert [tuple(row) for row in counts] == [
            ("0001_items", 1),
            ("0002_counters", 1),
            ("0003_notes", 1),
        ]
        assert await bare_db.shard(index).fetch_one("SELECT COUNT(*) FROM counters") == (1,)


async def test_a_migration_added_later_is_applied(bare_db: ShardedDatabase) -> None:
    await bare_db.migrate([ITEMS, COUNTERS])
    await bare_db.shard(0).execute("UPDATE counters SET n = 5 WHERE name = 'seed'")

    await bare_db.migrate(MIGRATIONS)

    for index in range(SHARDS):
        assert await applied(bare_db, index) == ["0001_items", "0002_counters", "0003_notes"]
        await bare_db.shard(index).execute("INSERT INTO notes (id, body) VALUES (?, ?)", (1, "x"))
    # earlier migrations were not run again: their data is untouched
    assert await bare_db.shard(0).fetch_one("SELECT n FROM counters WHERE name = 'seed'") == (5,)


async def test_a_failing_migration_is_not_recorded(bare_db: ShardedDatabase) -> None:
    broken = Migration("0004_broken", ["CREATE TABLE broken (id TEXT)", "NOT SQL AT ALL"])
    with pytest.raises(DRIVER_ERRORS):
        await bare_db.migrate([*MIGRATIONS, broken])

    # the next run succeeds once the migration is fixed (CREATE TABLE broken is not left behind)
    await bare_db.migrate(
        [*MIGRATIONS, Migration("0004_broken", ["CREATE TABLE broken (id TEXT)"])]
    )
    for index in range(SHARDS):
        assert "0004_broken" in await applied(bare_db, index)


# --- statements -------------------------------------------------------------------------------


async def test_execute_returns_the_number_of_rows_changed(db: ShardedDatabase) -> None:
    shard = db.shard(1)
    insert = "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)"
    assert await shard.execute(insert, ("a", "apple", 1)) == 1
    assert await shard.execute(insert, ("b", "banana", 2)) == 1
    assert await shard.execute(insert, ("c", "cherry", 3)) == 1
    assert await shard.execute(insert + " ON CONFLICT DO NOTHING", ("a", "again", 9)) == 0
    assert await shard.execute(insert + " ON CONFLICT (id) DO NOTHING", ("d", "date", 4)) == 1

    assert await shard.execute("UPDATE items SET qty = qty + 10 WHERE qty >= ?", (2,)) == 3
    assert await shard.execute("UPDATE items SET qty = 0 WHERE id = ?", ("zzz",)) == 0
    assert await shard.execute("DELETE FROM items WHERE qty > ?", (10,)) == 3
    assert await shard.execute("DELETE FROM items WHERE id = ?", ("b",)) == 0
    assert await shard.fetch_all("SELECT id, qty FROM items") == [("a", 1)]


async def test_execute_many_inserts_every_row(db: ShardedDatabase) -> None:
    rows = [(f"item-{i:03}", f"name {i}", i) for i in range(200)]
    await db.shard(1).execute_many("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", rows)

    stored = await db.shard(1).fetch_all("SELECT id, name, qty FROM items ORDER BY id")
    assert [tuple(row) for row in stored] == rows
    assert await db.shard(0).fetch_one("SELECT COUNT(*) FROM items") == (0,)  # shards are separate


async def test_execute_many_is_all_or_nothing(db: ShardedDatabase) -> None:
    rows = [("x", "first", 1), ("y", "second", 2), ("x", "duplicate", 3)]
    with pytest.raises(DRIVER_ERRORS):
        await db.shard(0).execute_many("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", rows)
    assert await db.shard(0).fetch_one("SELECT COUNT(*) FROM items") == (0,)


async def test_fetch_returns_positional_rows_and_none_for_no_row(db: ShardedDatabase) -> None:
    shard = db.shard(0)
    await shard.execute_many(
        "INSERT INTO items (id, name, qty, price) VALUES (?, ?, ?, ?)",
        [("b", "bee", 2, 1.5), ("a", "ant", 1, None)],
    )

    row = await shard.fetch_one("SELECT id, name, qty, price FROM items WHERE id = ?", ("b",))
    assert row is not None
    assert (row[0], row[1], row[2], row[3]) == ("b", "bee", 2, 1.5)
    assert len(row) == 4
    assert tuple(row) == ("b", "bee", 2, 1.5)

    rows = await shard.fetch_all("SELECT id, price FROM items ORDER BY id")
    assert [tuple(r) for r in rows] == [("a", None), ("b", 1.5)]
    first = await shard.fetch_one("SELECT id FROM items ORDER BY id DESC")
    assert first is not None
    assert first[0] == "b"

    assert await shard.fetch_one("SELECT id FROM items WHERE id = ?", ("nope",)) is None
    assert await shard.fetch_all("SELECT id FROM items WHERE qty > ?", (100,)) == []


async def test_unicode_and_large_text_roundtrip(db: ShardedDatabase) -> None:
    texts = {
        1: "héllo wörld ✓ 🚀 日本語のテキスト ‮rtl‬ 'quotes' \"double\" ? $1 %s",
        2: "x" * 1_000_000,
        3: "🙂" * 50_000 + "\n\t\\",
        4: "",
    }
    await db.shard(1).execute_many(
        "INSERT INTO notes (id, body) VALUES (?, ?)", list(texts.items())
    )
    for note_id, text in texts.items():
        row = await db.shard(1).fetch_one("SELECT body FROM notes WHERE id = ?", (note_id,))
        assert row is not None
        assert row[0] == text
    # a parameter is a value, never SQL, even when it looks like a placeholder
    assert await db.shard(1).fetch_one("SELECT id FROM notes WHERE body = ?", (texts[1],)) == (1,)


async def test_numbers_roundtrip_exactly(db: ShardedDatabase) -> None:
    numbers = [
        (2**62, 0.1 + 0.2),
        (-(2**62), -1e-300),
        (2**63 - 1, 1.7976931348623157e308),
        (0, 123456789.123456789),
    ]
    await db.shard(0).execute_many(
        "INSERT INTO items (id, name, qty, price) VALUES (?, 'number', ?, ?)",
        [(str(i), qty, price) for i, (qty, price) in enumerate(numbers)],
    )
    for i, (qty, price) in enumerate(numbers):
        row = await db.shard(0).fetch_one("SELECT qty, price FROM items WHERE id = ?", (str(i),))
        assert row is not None
        assert (row[0], row[1]) == (qty, price)
        assert (type(row[0]), type(row[1])) == (int, float)


# --- transactions -----------------------------------------------------------------------------


async def test_transaction_commits_on_exit(db: ShardedDatabase) -> None:
    async with db.transaction(1) as tx:
        await tx.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", ("a", "A", 1))
        await tx.execute_many(
            "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", [("b", "B", 2), ("c", "C", 3)]
        )
        # the transaction reads its own writes
        assert await tx.fetch_one("SELECT COUNT(*) FROM items") == (3,)
        assert await tx.execute("UPDATE items SET qty = qty * 10") == 3

    rows = await db.shard(1).fetch_all("SELECT id, qty FROM items ORDER BY id")
    assert [tuple(row) for row in rows] == [("a", 10), ("b", 20), ("c", 30)]


async def test_transaction_rolls_back_on_an_exception(db: ShardedDatabase) -> None:
    await db.shard(1).execute("INSERT INTO items (id, name, qty) VALUES ('keep', 'K', 1)")

    class Boom(Exception):
        pass

    async def write_then_fail() -> None:
        async with db.transaction(1) as tx:
            await tx.execute("INSERT INTO items (id, name, qty) VALUES (?, ?, ?)", ("a", "A", 1))
            await tx.execute("UPDATE items SET qty = 99 WHERE id = 'keep'")
            await tx.execute("DELETE FROM counters")
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()

    rows = await db.shard(1).fetch_all("SELECT id, qty FROM items")
    assert [tuple(row) for row in rows] == [("keep", 1)]
    assert await db.shard(1).fetch_one("SELECT COUNT(*) FROM counters") == (1,)

    # the shard is usable afterwards, in and out of a transaction
    async with db.transaction(1) as tx:
        await tx.execute("INSERT INTO items (id, name, qty) VALUES ('after', 'A', 2)")
    assert await db.shard(1).fetch_one("SELECT qty FROM items WHERE id = 'after'") == (2,)


async def test_a_failing_statement_rolls_the_whole_transaction_back(db: ShardedDatabase) -> None:
    insert = "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)"

    async def insert_twice() -> None:
        async with db.transaction(0) as tx:
            await tx.execute(insert, ("a", "A", 1))
            await tx.execute(insert, ("a", "duplicate", 2))

    with pytest.raises(DRIVER_ERRORS):
        await insert_twice()
    assert await db.shard(0).fetch_one("SELECT COUNT(*) FROM items") == (0,)


async def test_concurrent_read_modify_write_transactions_lose_no_update(
    db: ShardedDatabase,
) -> None:
    """What the port guarantees: a transaction is atomic, not serializable. A read-modify-write
    must lock what it read: `SELECT ... FOR UPDATE` on PostgreSQL (READ COMMITTED); SQLite needs
    nothing, since a transaction holds its shard's only writer until it ends."""
    lock = " FOR UPDATE" if db.dialect == "postgresql" else ""

    async def increment() -> None:
        async with db.transaction(1) as tx:
            row = await tx.fetch_one("SELECT n FROM counters WHERE name = 'seed'" + lock)
            assert row is not None
            await asyncio.sleep(0)  # let the other transactions run in between
            await tx.execute("UPDATE counters SET n = ? WHERE name = 'seed'", (row[0] + 1,))

    await asyncio.gather(*(increment() for _ in range(50)))

    assert await db.shard(1).fetch_one("SELECT n FROM counters WHERE name = 'seed'") == (50,)


async def test_concurrent_relative_updates_lose_no_update(db: ShardedDatabase) -> None:
    async def increment(in_transaction: bool) -> None:
        sql = "UPDATE counters SET n = n + 1 WHERE name = 'seed'"
        if in_transaction:
            async with db.transaction(0) as tx:
                assert await tx.execute(sql) == 1
        else:
            assert await db.shard(0).execute(sql) == 1

    await asyncio.gather(*(increment(i % 2 == 0) for i in range(50)))

    assert await db.shard(0).fetch_one("SELECT n FROM counters WHERE name = 'seed'") == (50,)


async def test_many_concurrent_statements_each_get_their_answer(db: ShardedDatabase) -> None:
    """More statements at once than any pool holds connections: each answers its own query,
    and the shard keeps working afterwards."""
    await db.shard(0).execute_many(
        "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)",
        [(f"c{i}", f"item {i}", i) for i in range(200)],
    )

    async def read(i: int) -> int:
        row = await db.shard(0).fetch_one("SELECT qty FROM items WHERE id = ?", (f"c{i}",))
        assert row is not None
        return int(row[0])

    assert await asyncio.gather(*(read(i) for i in range(200))) == list(range(200))
    assert await db.shard(0).fetch_one("SELECT COUNT(*) FROM items") == (200,)


async def test_a_failed_statement_leaves_the_shard_usable(db: ShardedDatabase) -> None:
    """Errors, one after another and concurrent with good statements: every later statement
    still runs, autocommitted (no statement is left inside an aborted transaction)."""
    insert = "INSERT INTO items (id, name, qty) VALUES (?, ?, ?)"
    await db.shard(0).execute(insert, ("dup", "first", 1))

    async def duplicate() -> None:
        with pytest.raises(DRIVER_ERRORS):
            await db.shard(0).execute(insert, ("dup", "again", 2))

    async def good(i: int) -> None:
        await db.shard(0).execute(insert, (f"g{i}", "good", i))

    await asyncio.gather(*(duplicate() if i % 2 else good(i) for i in range(40)))

    assert await db.shard(0).fetch_one("SELECT COUNT(*) FROM items") == (21,)
    assert await db.shard(0).fetch_one("SELECT name FROM items WHERE id = 'dup'") == ("first",)


async def test_a_cancelled_statement_leaves_the_shard_usable(db: ShardedDatabase) -> None:
    """A caller that gives up mid-statement (a client gone, a timeout) does not leave a
    connection in a state that breaks the next statements. (SQLite's thread finishes the
    query it was given, so the statements after it wait for that, then run.)"""
    slow = (
        "SELECT pg_sleep(5)"
        if db.dialect == "postgresql"
        else "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 2000000) "
        "SELECT COUNT(*) FROM r"
    )
    for _ in range(6):
        task = asyncio.create_task(db.shard(0).fetch_one(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def count() -> Any:
        return await db.shard(0).fetch_one("SELECT COUNT(*) FROM items")

    assert await asyncio.wait_for(asyncio.gather(*(count() for _ in range(12))), 30) == [(0,)] * 12


async def test_connections_the_server_closed_are_replaced(database_url: str) -> None:
    """PostgreSQL ends every connection (a restart, a failover, an idle timeout): a statement
    may fail once per lost connection, as with any pool, and then the shard works again."""
    if not database_url.startswith("postgresql"):
        pytest.skip("a SQLite shard has no server to lose")
    db = await open_database(database_url, SHARDS)
    try:
        await db.migrate(MIGRATIONS)
        await asyncio.gather(*(db.shard(0).fetch_one("SELECT 1") for _ in range(20)))
        admin = await asyncpg.connect(database_url.replace("{shard}", "0"))
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        await asyncio.sleep(0.2)
        answers = []
        for _ in range(20):  # every lost connection fails at most one statement
            try:
                answers.append(await db.shard(0).fetch_one("SELECT 1"))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                answers.append(None)
        assert answers[-5:] == [(1,)] * 5
        assert answers.count(None) <= 10
    finally:
        await asyncio.wait_for(db.close(), 15)


async def test_close_returns_promptly_after_a_rush(database_url: str) -> None:
    """Connections kept between statements go back on close: closing does not wait out the
    pools' grace period."""
    db = await open_database(database_url, SHARDS)
    await db.migrate(MIGRATIONS)
    await asyncio.gather(*(db.shard(i % SHARDS).fetch_one("SELECT 1") for i in range(100)))
    started = asyncio.get_running_loop().time()
    await db.close()
    assert asyncio.get_running_loop().time() - started < 5


async def test_close_while_a_statement_runs_returns_promptly(database_url: str) -> None:
    """A statement that ends after close began does not hold the close up: its connection
    goes back to the pool, not to be kept."""
    db = await open_database(database_url, SHARDS)
    await db.migrate(MIGRATIONS)
    await asyncio.gather(*(db.shard(0).fetch_one("SELECT 1") for _ in range(8)))
    slow = (
        "SELECT pg_sleep(0.5)"
        if db.dialect == "postgresql"
        else "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 1000000) "
        "SELECT COUNT(*) FROM r"
    )
    running = asyncio.create_task(db.shard(0).fetch_one(slow))
    await asyncio.sleep(0.1)
    started = asyncio.get_running_loop().time()
    await db.close()
    assert asyncio.get_running_loop().time() - started < 5
    with contextlib.suppress(*DRIVER_ERRORS, ValueError):
        await running


async def test_ping_answers(db: ShardedDatabase) -> None:
    await db.ping()


# --- sharding ---------------------------------------------------------------------------------

# Pinned: changing the hash would silently move every row to another shard.
KNOWN_SHARDS = {"user:1": 1, "drop:abc": 3, "creator:celebrity": 1, "": 2, "ü": 2}


def test_shard_of_is_pinned() -> None:
    assert {key: shard_of(key, 4) for key in KNOWN_SHARDS} == KNOWN_SHARDS
    assert key_hash("user:1") == 15310966450534750738
    assert key_hash("ü") == 6192904641445441335


async def test_every_backend_shards_keys_the_same_way(database_url: str) -> None:
    four = await open_database(database_url, 4)
    try:
        assert four.shard_count == 4
        assert {key: four.shard_of(key) for key in KNOWN_SHARDS} == KNOWN_SHARDS
        keys = [f"order:{i}" for i in range(2000)]
        assert [four.shard_of(key) for key in keys] == [shard_of(key, 4) for key in keys]
    finally:
        await four.close()


def test_shard_of_spreads_keys_evenly() -> None:
    counts = Counter(shard_of(f"user-{i}", 4) for i in range(10_000))
    assert set(counts) == {0, 1, 2, 3}
    assert all(2300 <= count <= 2700 for count in counts.values()), counts


def test_jump_hash_matches_the_reference_implementation() -> None:
    # values from the C reference (Lamping & Veach, 2014, figure 1)
    assert jump_hash(0, 10) == 0
    assert jump_hash(1, 10) == 6
    assert jump_hash(0xDEADBEEF, 1000) == 285
    assert jump_hash(2**64 - 1, 7) == 2
    assert jump_hash(12345678901234567890, 256) == 208


def test_jump_hash_only_moves_keys_to_a_new_bucket() -> None:
    generator = random.Random(42)
    keys = [generator.getrandbits(64) for _ in range(1000)]
    for buckets in range(1, 33):
        moved = 0
        for key in keys:
            before, after = jump_hash(key, buckets), jump_hash(key, buckets + 1)
            assert 0 <= before < buckets
            if after != before:
                assert after == buckets  # never between old buckets
                moved += 1
        expected = len(keys) / (buckets + 1)
        assert abs(moved - expected) < 5 * expected**0.5 + 5, (buckets, moved)


def test_jump_hash_refuses_zero_buckets() -> None:
    assert jump_hash(123, 1) == 0
    with pytest.raises(ValueError, match="buckets"):
        jump_hash(123, 0)
