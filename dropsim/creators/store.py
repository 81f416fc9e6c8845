"""Catalog tables (creators, products, drops) on the catalog shard; nobody else reads them."""

from __future__ import annotations

from collections.abc import Sequence

from dropsim.creators.models import Creator, Drop, DropStatus, Product
from dropsim.ports import Migration, Row, ShardedDatabase
from dropsim.timeutil import to_datetime

CATALOG_SHARD = 0
"""The catalog is small (thousands of creators) and read through the cache: one shard holds it."""

MIGRATIONS = (
    Migration(
        "creators-001",
        (
            "CREATE TABLE IF NOT EXISTS creators (id TEXT PRIMARY KEY, "
            "handle TEXT NOT NULL UNIQUE, "
            "display_name TEXT NOT NULL, bio TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
            "CREATE TABLE IF NOT EXISTS products (id TEXT PRIMARY KEY, creator_id TEXT NOT NULL, "
            "name TEXT NOT NULL, description TEXT NOT NULL, image_url TEXT, "
            "created_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS products_by_creator ON products (creator_id, id)",
            "CREATE TABLE IF NOT EXISTS drops (id TEXT PRIMARY KEY, creator_id TEXT NOT NULL, "
            "product_id TEXT NOT NULL, stock BIGINT NOT NULL, price_cents BIGINT NOT NULL, "
            "per_user_limit INTEGER NOT NULL, starts_at DOUBLE PRECISION NOT NULL, "
            "ends_at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, "
            "created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX IF NOT EXISTS drops_by_status_start ON drops (status, starts_at)",
            "CREATE INDEX IF NOT EXISTS drops_by_status_end ON drops (status, ends_at)",
            "CREATE INDEX IF NOT EXISTS drops_by_creator ON drops (creator_id, id)",
        ),
    ),
)

_DROP_COLUMNS = (
    "id, creator_id, product_id, stock, price_cents, per_user_limit, starts_at, ends_at, "
    "status, created_at, updated_at"
)


def _creator(row: Row) -> Creator:
    return Creator(
        id=row[0], handle=row[1], display_name=row[2], bio=row[3], created_at=to_datetime(row[4])
    )


def _product(row: Row) -> Product:
    return Product(
        id=row[0],
        creator_id=row[1],
        name=row[2],
        description=row[3],
        image_url=row[4],
        created_at=to_datetime(row[5]),
    )


def _drop(row: Row) -> Drop:
    return Drop(
        id=row[0],
        creator_id=row[1],
        product_id=row[2],
        stock=int(row[3]),
        price_cents=int(row[4]),
        per_user_limit=int(row[5]),
        starts_at=to_datetime(row[6]),
        ends_at=to_datetime(row[7]),
        status=DropStatus(row[8]),
        created_at=to_datetime(row[9]),
        updated_at=to_datetime(row[10]),
    )


class CatalogStore:
    def __init__(self, db: ShardedDatabase) -> None:
        self._q = db.shard(CATALOG_SHARD)

    # creators
    async def insert_creator(
        self, creator_id: str, handle: str, display_name: str, bio: str, now: float
    ) -> bool:
        """False if the handle or the id is taken."""
        changed = await self._q.execute(
            "INSERT INTO creators (id, handle, display_name, bio, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (creator_id, handle, display_name, bio, now),
        )
        return changed == 1

    async def creator(self, creator_id: str) -> Creator | None:
        row = await self._q.fetch_one(
            "SELECT id, handle, display_name, bio, created_at FROM creators WHERE id = ?",
            (creator_id,),
        )
        return None if row is None else _creator(row)

    async def creator_by_handle(self, handle: str) -> Creator | None:
        row = await self._q.fetch_one(
            "SELECT id, handle, display_name, bio, created_at FROM creators WHERE handle = ?",
            (handle,),
        )
        return None if row is None else _creator(row)

    async def creators(self, after: str, limit: int) -> list[Creator]:
        rows = await self._q.fetch_all(
            "SELECT id, handle, display_name, bio, created_at FROM creators WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [_creator(row) for row in rows]

    # products
    async def insert_product(self, product: Product, now: float) -> None:
        await self._q.execute(
            "INSERT INTO products (id, creator_id, name, description, image_url, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                product.id,
                product.creator_id,
                product.name,
                product.description,
                product.image_url,
                now,
            ),
        )

    async def product(self, product_id: str) -> Product | None:
        row = await self._q.fetch_one(
            "SELECT id, creator_id, name, description, image_url, created_at FROM products "
            "WHERE id = ?",
            (product_id,),
        )
        return None if row is None else _product(row)

    async def products(self, creator_id: str, after: str, limit: int) -> list[Product]:
        rows = await self._q.fetch_all(
            "SELECT id, creator_id, name, description, image_url, created_at FROM products "
            "WHERE creator_id = ? AND id > ? ORDER BY id LIMIT ?",
            (creator_id, after, limit),
        )
        return [_product(row) for row in rows]

    async def update_product(
        self, product_id: str, name: str, description: str, image_url: str | None
    ) -> None:
        await self._q.execute(
            "UPDATE products SET name = ?, description = ?, image_url = ? WHERE id = ?",
            (name, description, image_url, product_id),
        )

    # drops
    async def insert_drop(self, drop: Drop) -> None:
        await self._q.execute(
            f"INSERT INTO drops ({_DROP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                drop.id,
                drop.creator_id,
                drop.product_id,
                drop.stock,
                drop.price_cents,
                drop.per_user_limit,
                drop.starts_at.timestamp(),
                drop.ends_at.timestamp(),
                drop.status.value,
                drop.created_at.timestamp(),
                drop.updated_at.timestamp(),
            ),
        )

    async def drop(self, drop_id: str) -> Drop | None:
        row = await self._q.fetch_one(f"SELECT {_DROP_COLUMNS} FROM drops WHERE id = ?", (drop_id,))
        return None if row is None else _drop(row)

    async def drops(
        self, *, after: str, limit: int, status: DropStatus | None, creator_id: str | None
    ) -> list[Drop]:
        clauses, params = ["id > ?"], [after]
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if creator_id is not None:
            clauses.append("creator_id = ?")
            params.append(creator_id)
        rows = await self._q.fetch_all(
            f"SELECT {_DROP_COLUMNS} FROM drops WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?",
            (*params, limit),
        )
        return [_drop(row) for row in rows]

    async def started_drops(
        self, creator_ids: Sequence[str], before: float, limit: int
    ) -> list[Drop]:
        """Drops of these creators that went live (live, sold out or ended since), newest first."""
        if not creator_ids:
            return []
        marks = ", ".join("?" * len(creator_ids))
        rows = await self._q.fetch_all(
            f"SELECT {_DROP_COLUMNS} FROM drops WHERE creator_id IN ({marks}) "
            "AND status IN (?, ?, ?) AND starts_at < ? ORDER BY starts_at DESC, id LIMIT ?",
            (
                *creator_ids,
                DropStatus.LIVE.value,
                DropStatus.SOLD_OUT.value,
                DropStatus.ENDED.value,
                before,
                limit,
            ),
        )
        return [_drop(row) for row in rows]

    async def update_scheduled_drop(self, drop: Drop, now: float) -> bool:
        """Rewrite a drop's terms; False if it is no longer scheduled (the clock won the race)."""
        changed = await self._q.execute(
            "UPDATE drops SET stock = ?, price_cents = ?, per_user_limit = ?, starts_at = ?, "
            "ends_at = ?, updated_at = ? WHERE id = ? AND status = 'scheduled'",
            (
                drop.stock,
                drop.price_cents,
                drop.per_user_limit,
                drop.starts_at.timestamp(),
                drop.ends_at.timestamp(),
                now,
                drop.id,
            ),
        )
        return changed == 1

    async def move_drop(
        self, drop_id: str, expected: Sequence[DropStatus], target: DropStatus, now: float
    ) -> bool:
        """Compare-and-set the status: True only for the one caller that made the move."""
        marks = ", ".join("?" for _ in expected)
        changed = await self._q.execute(
            f"UPDATE drops SET status = ?, updated_at = ? WHERE id = ? AND status IN ({marks})",
            (target.value, now, drop_id, *(status.value for status in expected)),
        )
        return changed == 1

    async def due_drops(self, now: float, limit: int = 500) -> list[Drop]:
        """Drops whose status the clock should change at `now`."""
        rows = await self._q.fetch_all(
            f"SELECT {_DROP_COLUMNS} FROM drops WHERE (status = 'scheduled' AND starts_at <= ?) "
            "OR (status IN ('scheduled', 'live', 'sold_out') AND ends_at <= ?) LIMIT ?",
            (now, now, limit),
        )
        return [_drop(row) for row in rows]

    async def next_due_at(self) -> float | None:
        """The earliest moment at which some drop's status becomes due, if any."""
        row = await self._q.fetch_one(
            "SELECT MIN(t) FROM ("
            "SELECT MIN(starts_at) AS t FROM drops WHERE status = 'scheduled' "
            "UNION ALL SELECT MIN(ends_at) AS t FROM drops "
            "WHERE status IN ('live', 'sold_out')) AS due"
        )
        return None if row is None or row[0] is None else float(row[0])
