"""Shared fixtures: every backend-facing test runs on the embedded backends and, when their URLs
are set (always under CI), on real Redis and PostgreSQL.

Each test run works in PostgreSQL databases of its own (`dropsim_test_{shard}` becomes
`dropsim_test_run<pid>_{shard}`, created on first connect, dropped at the end), so a run never waits
on, or wipes, what another run or a leftover process holds."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from dropsim.backends import open_kv
from dropsim.ports import KeyValueStore
from dropsim.settings import Settings
from dropsim.testing import embedded_settings

REDIS_ENV = "DROPSIM_TEST_REDIS_URL"
POSTGRES_ENV = "DROPSIM_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    template = os.environ.get(POSTGRES_ENV)
    if template and "{shard}" in template and _THIS_RUN not in template:
        os.environ[POSTGRES_ENV] = template.replace("{shard}", _THIS_RUN + "{shard}")
        _drop_run_databases(os.environ[POSTGRES_ENV], stale_only=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    url = os.environ.get(POSTGRES_ENV)
    if url and _THIS_RUN in url:
        _drop_run_databases(url, stale_only=False)


_THIS_RUN = f"run{os.getpid()}_"


def _drop_run_databases(url: str, *, stale_only: bool) -> None:
    """Drop this run's shard databases, or (`stale_only`) those of runs whose process is gone."""
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    parts = urlsplit(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    prefix = parts.path.lstrip("/").split("{shard}")[0]  # dropsim_test_run<pid>_
    family = re.escape(prefix.removesuffix(_THIS_RUN))  # dropsim_test_
    pattern = re.compile(rf"{family}run(\d+)_\d+")

    def wanted(name: str) -> bool:
        match = pattern.fullmatch(name)
        if match is None:
            return False
        if not stale_only:
            return name.startswith(prefix)
        try:
            os.kill(int(match.group(1)), 0)  # is that run still going?
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # alive, another user's
        return False

    async def drop() -> None:
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")), timeout=10)
        try:
            for row in await admin.fetch("SELECT datname FROM pg_database"):
                if wanted(row["datname"]):
                    await admin.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await admin.close()

    try:
        asyncio.run(drop())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"note: could not drop test databases ({exc})")


def real_url(variable: str, what: str) -> str:
    """The URL in `variable`; skip (or, under CI, fail) when it is not set."""
    url = os.environ.get(variable)
    if url:
        return url
    reason = f"{what} not configured: set {variable} to run this test on a real {what}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so real backends are required)")
    pytest.skip(reason)


def reset_redis(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


def reset_postgres(url: str, shards: int) -> None:
    """Drop every table in each shard database (they are created again by the migrations)."""

    async def reset() -> None:
        from dropsim.backends.postgres import PostgresDatabase

        db = await PostgresDatabase.connect(url, shards)  # creates missing databases
        try:
            for index in range(shards):
                await db.shard(index).execute("DROP SCHEMA IF EXISTS public CASCADE")
                await db.shard(index).execute("CREATE SCHEMA public")
        finally:
            await db.close()

    asyncio.run(reset())


def real_settings(directory: Path, shards: int = 2) -> Settings:
    redis_url = real_url(REDIS_ENV, "Redis")
    postgres_url = real_url(POSTGRES_ENV, "PostgreSQL")
    reset_redis(redis_url)
    reset_postgres(postgres_url, shards)
    return embedded_settings(directory, kv_url=redis_url, db_url=postgres_url, shards=shards)


@pytest.fixture(params=["embedded", "real"])
def backend_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    """Settings for fakeredis + SQLite, then for real Redis + PostgreSQL (cleaned first)."""
    if request.param == "embedded":
        yield embedded_settings(tmp_path)
    else:
        yield real_settings(tmp_path)


@pytest.fixture(scope="module", params=["embedded", "real"])
def shared_backend_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """Like `backend_settings`, but one per test module: for a server that several tests share
    (each test makes its own users and drops)."""
    directory = tmp_path_factory.mktemp("backend")
    if request.param == "embedded":
        yield embedded_settings(directory)
    else:
        yield real_settings(directory)


@pytest.fixture(params=["memory", "redis"])
async def kv(request: pytest.FixtureRequest) -> AsyncIterator[KeyValueStore]:
    """An empty KV store: a private fakeredis, or the real Redis test database (flushed first)."""
    url = "memory://"
    if request.param == "redis":
        url = real_url(REDIS_ENV, "Redis")
        reset_redis(url)
    store = await open_kv(url)
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def real_backend_settings(tmp_path: Path) -> Settings:
    """Real Redis + PostgreSQL only (multi-process tests need a shared backend)."""
    return real_settings(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded backends in a temporary directory."""
    return embedded_settings(tmp_path)
