"""Shared fixtures: every backend-facing test runs on the embedded backends and, when their URLs
are set (always under CI), on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dropsim.settings import Settings
from dropsim.testing import embedded_settings

REDIS_ENV = "DROPSIM_TEST_REDIS_URL"
POSTGRES_ENV = "DROPSIM_TEST_POSTGRES_URL"


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
    client = redis.Redis.from_url(url)
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


@pytest.fixture
def real_backend_settings(tmp_path: Path) -> Settings:
    """Real Redis + PostgreSQL only (multi-process tests need a shared backend)."""
    return real_settings(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded backends in a temporary directory."""
    return embedded_settings(tmp_path)
