"""Settings: defaults, DROPSIM_* variables, CLI overrides, and one clear line for each bad value."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dropsim.backends import open_database, open_kv
from dropsim.errors import BackendUnavailable, ConfigurationError
from dropsim.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No DROPSIM_* variable from the outside (CI sets some), run from an empty directory."""
    for name in list(os.environ):
        if name.startswith("DROPSIM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kv_url == "memory://"
    assert settings.embedded_kv
    assert settings.db_url == "sqlite:///.dropsim/shard-{shard}.db"
    assert settings.shards == 4
    assert settings.data_dir == Path(".dropsim")
    assert settings.jwt_secret == ""
    assert settings.token_ttl_seconds == 86_400
    assert settings.cache_ttl_seconds == 30.0
    assert settings.max_body_bytes == 65_536
    assert settings.scheduler_poll_seconds == 0.5
    assert settings.event_log_max_len == 100_000


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPSIM_KV_URL", "redis://cache.internal:6379/2")
    monkeypatch.setenv("DROPSIM_DB_URL", "postgresql://db.internal/dropsim_{shard}")
    monkeypatch.setenv("DROPSIM_SHARDS", "8")
    monkeypatch.setenv("DROPSIM_DATA_DIR", "/var/lib/dropsim")
    monkeypatch.setenv("DROPSIM_CACHE_TTL_SECONDS", "2.5")
    monkeypatch.setenv("DROPSIM_JWT_SECRET", "s3cret")

    settings = load_settings()

    assert settings.kv_url == "redis://cache.internal:6379/2"
    assert not settings.embedded_kv
    assert settings.db_url == "postgresql://db.internal/dropsim_{shard}"
    assert settings.shards == 8
    assert settings.data_dir == Path("/var/lib/dropsim")
    assert settings.cache_ttl_seconds == 2.5
    assert settings.signing_secret() == "s3cret"


def test_unrelated_dropsim_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    # the test suite's own DROPSIM_TEST_* variables must not break a server's settings
    monkeypatch.setenv("DROPSIM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    assert load_settings().kv_url == "memory://"


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPSIM_SHARDS", "8")
    monkeypatch.setenv("DROPSIM_KV_URL", "redis://cache.internal:6379/2")

    settings = load_settings(shards=2, kv_url="memory://", db_url=None)

    assert settings.shards == 2
    assert settings.kv_url == "memory://"
    assert settings.db_url == "sqlite:///.dropsim/shard-{shard}.db"  # None: flag not given
    assert load_settings(shards=None).shards == 8


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.shards = 9  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"kv_url": "mysql://h/db"}, "kv_url: unknown KV scheme 'mysql'"),
        ({"kv_url": "localhost:6379"}, "kv_url: unknown KV scheme 'localhost'"),
        ({"db_url": "mysql://h/db_{shard}"}, "db_url: unknown SQL scheme 'mysql'"),
        ({"shards": 0}, "shards: Input should be greater than or equal to 1"),
        ({"shards": 1000}, "shards: Input should be less than or equal to 256"),
        ({"shards": "many"}, "shards: Input should be a valid integer"),
        (
            {"shards": 2, "db_url": "sqlite:///one.db"},
            "settings: db_url needs a {shard} placeholder when shards > 1",
        ),
        ({"cache_ttl_seconds": 0}, "cache_ttl_seconds: Input should be greater than 0"),
        ({"sse_max_connections": 0}, "sse_max_connections: Input should be greater than"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_raises_one_clear_line(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(**overrides)
    message = str(caught.value)
    assert message.startswith(expected)
    assert "\n" not in message
    assert "pydantic" not in message  # no link to the validation library's docs
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_a_bad_environment_variable_raises_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPSIM_SHARDS", "0")
    with pytest.raises(ConfigurationError, match=r"^shards: .*greater than or equal to 1$"):
        load_settings()


def test_one_shard_needs_no_placeholder() -> None:
    assert load_settings(shards=1, db_url="sqlite:///one.db").db_url == "sqlite:///one.db"


def test_the_kv_scheme_message_says_what_to_use() -> None:
    with pytest.raises(ConfigurationError, match=r"use memory:// or redis://"):
        load_settings(kv_url="mongodb://h")


# --- backends refuse bad URLs -----------------------------------------------------------------


async def test_unknown_schemes_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown KV scheme 'mysql'") as kv_error:
        await open_kv("mysql://h/db")
    assert not isinstance(kv_error.value, BackendUnavailable)
    with pytest.raises(ConfigurationError, match="unknown SQL scheme 'mysql'") as db_error:
        await open_database("mysql://h/db_{shard}", 1)
    assert not isinstance(db_error.value, BackendUnavailable)


async def test_an_unreachable_redis_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(
        BackendUnavailable, match=r"^cannot reach Redis at redis://127\.0\.0\.1:1/0"
    ):
        await open_kv("redis://127.0.0.1:1/0")
    assert time.monotonic() - started < 2.0


async def test_an_unreachable_postgres_fails_fast_without_leaking_the_password() -> None:
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"^cannot reach PostgreSQL at ") as caught:
        await open_database("postgresql://postgres:hunter2@127.0.0.1:1/x_{shard}", 1)
    assert time.monotonic() - started < 5.0
    assert "hunter2" not in str(caught.value)
    assert isinstance(caught.value, ConfigurationError)  # the CLI reports it as one line, exit 2
