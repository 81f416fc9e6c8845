"""Account tables: `users` sharded by user id, `credentials` by e-mail (log-in looks up by it)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec

from dropsim.accounts.models import Role, User
from dropsim.ports import Migration, ShardedDatabase

MIGRATIONS = (
    Migration(
        "accounts-001",
        (
            "CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, handle TEXT NOT NULL, "
            "email TEXT, role TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS credentials (email TEXT PRIMARY KEY, "
            "user_id TEXT NOT NULL, password_hash TEXT NOT NULL)",
        ),
    ),
)

# The rows travel as one JSON object {id: handle} per shard, unpacked by the database: no per-row
# loop in the driver (asyncpg checks every element of an array parameter in Python). `WHERE true`
# keeps SQLite's parser from reading ON CONFLICT as part of a join.
_JSON_OBJECT_ROWS = {"sqlite": "json_each(?)", "postgresql": "json_each_text(CAST(? AS json))"}
_BULK_USERS = (
    "INSERT INTO users (id, handle, email, role, created_at) "
    "SELECT u.key, u.value, NULL, CAST(? AS TEXT), CAST(? AS DOUBLE PRECISION) "
    "FROM {rows} AS u WHERE true ON CONFLICT (id) DO NOTHING"
)


class AccountStore:
    def __init__(self, db: ShardedDatabase) -> None:
        self._db = db

    async def claim_email(self, email: str, user_id: str, password_hash: str) -> bool:
        """Record the credentials; False if the e-mail is taken."""
        shard = self._db.shard_of(email)
        changed = await self._db.shard(shard).execute(
            "INSERT INTO credentials (email, user_id, password_hash) VALUES (?, ?, ?) "
            "ON CONFLICT (email) DO NOTHING",
            (email, user_id, password_hash),
        )
        return changed == 1

    async def credentials(self, email: str) -> tuple[str, str] | None:
        """(user_id, password_hash) for `email`."""
        row = await self._db.shard(self._db.shard_of(email)).fetch_one(
            "SELECT user_id, password_hash FROM credentials WHERE email = ?", (email,)
        )
        return None if row is None else (row[0], row[1])

    async def replace_password_hash(self, email: str, password_hash: str) -> None:
        await self._db.shard(self._db.shard_of(email)).execute(
            "UPDATE credentials SET password_hash = ? WHERE email = ?", (password_hash, email)
        )

    async def insert_users(self, users: Sequence[User]) -> None:
        """Insert users (existing ids are left alone), one batch per shard."""
        by_shard: dict[int, list[tuple[str, str, str | None, str, float]]] = {}
        for user in users:
            by_shard.setdefault(self._db.shard_of(user.id), []).append(
                (user.id, user.handle, user.email, user.role.value, user.created_at)
            )
        for shard, rows in by_shard.items():
            await self._db.shard(shard).execute_many(
                "INSERT INTO users (id, handle, email, role, created_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                rows,
            )

    async def insert_users_in_bulk(
        self, users: Sequence[tuple[str, str]], role: Role, created_at: float
    ) -> int:
        """Insert `(id, handle)` users without e-mail, skipping existing ids; return how many were
        new. One statement per shard, the shards written concurrently."""
        by_shard: dict[int, list[tuple[str, str]]] = {}
        for user in users:
            by_shard.setdefault(self._db.shard_of(user[0]), []).append(user)
        sql = _BULK_USERS.format(rows=_JSON_OBJECT_ROWS[self._db.dialect])
        inserted = await asyncio.gather(
            *(
                self._db.shard(shard).execute(
                    sql, (role.value, created_at, msgspec.json.encode(dict(sorted(rows))).decode())
                )
                for shard, rows in by_shard.items()
            )
        )
        return sum(inserted)

    async def user(self, user_id: str) -> User | None:
        row = await self._db.shard(self._db.shard_of(user_id)).fetch_one(
            "SELECT id, handle, role, created_at, email FROM users WHERE id = ?", (user_id,)
        )
        if row is None:
            return None
        return User(id=row[0], handle=row[1], role=Role(row[2]), created_at=row[3], email=row[4])

    async def set_role(self, user_id: str, role: Role) -> None:
        await self._db.shard(self._db.shard_of(user_id)).execute(
            "UPDATE users SET role = ? WHERE id = ?", (role.value, user_id)
        )
