"""Settings from CLI flags and DROPSIM_* environment variables, validated once at start-up."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dropsim.errors import ConfigurationError
from dropsim.gateway.limits import ClassLimits

KV_SCHEMES = frozenset({"memory", "redis", "rediss", "unix"})
SQL_SCHEMES = frozenset({"sqlite", "postgresql", "postgres"})


class Settings(BaseSettings):
    """Everything a dropsim process needs to know; every field is also `DROPSIM_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="DROPSIM_", extra="forbid", frozen=True)

    kv_url: str = "memory://"
    """Key-value store, cache and event log: `memory://` (fakeredis, in process) or `redis://...`."""
    db_url: str = "sqlite:///.dropsim/shard-{shard}.db"
    """SQL shards; `{shard}` is replaced by 0..shards-1 (`sqlite:///dir/shard-{shard}.db`,
    `postgresql://user@host:5432/dropsim_{shard}`)."""
    shards: int = Field(default=4, ge=1, le=256)
    """Number of SQL shards. Changing it for existing data needs a re-seed (no resharding yet)."""
    data_dir: Path = Path(".dropsim")
    """Where embedded backends and the generated JWT secret live."""
    jwt_secret: str = ""
    """Secret for signing JWTs; empty means: read or create `<data_dir>/jwt-secret`."""
    token_ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """Lifetime of an access token."""
    cache_ttl_seconds: float = Field(default=30.0, gt=0)
    """Catalog cache-aside TTL; each entry gets up to +20 % jitter so keys expire apart."""
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    """Largest request body accepted; bigger bodies get 413."""
    scheduler_poll_seconds: float = Field(default=0.5, gt=0, le=10)
    """Longest the drop clock sleeps before looking for transitions made by other processes."""
    event_log_max_len: int = Field(default=100_000, ge=100)
    """Approximate cap of the event log (a Redis stream): how far back a stream can resume."""
    sse_max_connections: int = Field(default=10_000, ge=1)
    """Event streams one process holds; more get 503 with a jittered Retry-After."""
    sse_retry_ms: int = Field(default=3000, ge=100, le=600_000)
    """The `retry:` advice sent to stream clients (jittered +-25 %)."""
    sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=300)
    """How often an idle stream gets a heartbeat comment."""
    stock_update_seconds: float = Field(default=0.25, gt=0, le=10)
    """Coalescing window of stock updates: each watched drop gets at most one per window."""
    public_url: str = "http://127.0.0.1:8000"
    """Where this server is reachable (the payment provider sends its callbacks here)."""
    reservation_hold_seconds: float = Field(default=60.0, gt=0, le=3600)
    """How long a reserved unit waits for its payment before the reaper puts it back."""
    reaper_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    """How often expired reservations are looked for."""
    payment_provider_url: str = "embedded"
    """Payment provider base URL; `embedded` serves the simulated one on loopback in process."""
    payment_signing_secret: str = ""
    """Secret the provider signs callbacks with; empty means: read or create
    `<data_dir>/payment-secret`."""
    payment_timeout_seconds: float = Field(default=20.0, gt=0, le=3600)
    """How long a payment waits for the provider's final callback before it is timed out."""
    payment_workers: int = Field(default=0, ge=0, le=64)
    """Processes that charge orders (`dropsim payments-worker`); 0: each server process charges
    the orders it takes. With workers, orders are handed to them on a Redis stream, so the KV
    store must be one every process shares."""
    payment_callback_retention_seconds: float = Field(default=7 * 86_400, ge=3600)
    """How long a provider event id is remembered against replays (longer than the provider
    redelivers: 3 days for Stripe)."""
    provider_latency_median_ms: float = Field(default=150.0, gt=0)
    """Simulated provider: median time from charge request to callback."""
    provider_latency_p99_ms: float = Field(default=1200.0, gt=0)
    """Simulated provider: 99th percentile of that time (latency is lognormal)."""
    provider_failure_rate: float = Field(default=0.05, ge=0, le=1)
    """Simulated provider: fraction of charges that are declined."""
    provider_duplicate_rate: float = Field(default=0.05, ge=0, le=1)
    """Simulated provider: fraction of callbacks delivered twice."""
    provider_out_of_order_rate: float = Field(default=0.02, ge=0, le=1)
    """Simulated provider: fraction of charges followed by a stale `charge.pending` callback."""
    provider_callback_loss_rate: float = Field(default=0.0, ge=0, le=1)
    """Simulated provider: fraction of charges never called back (these time out)."""
    order_lane: bool = True
    """Answer well-formed orders in front of the framework's router (gateway/order_lane.py);
    false sends them through Litestar like every other route (same answers, more CPU)."""
    rate_limit_enabled: bool = True
    """Limit requests per user and per client address (GCRA in Redis); false turns it off."""
    rate_limit_trusted_proxies: int = Field(default=0, ge=0, le=10)
    """Reverse proxies in front of the server that append to `X-Forwarded-For`; 0 ignores the
    header. Only set it when every request comes through them, or clients can pick addresses."""
    rate_limit_orders: str = "1/s:5,20/s:60"
    """Budget of `POST /v1/drops/{id}/orders` as `USER,IP`, each `RATE/UNIT:BURST` (5/s:10 is
    5 a second in bursts of 10; units s, m, h, e.g. 30/m:5 or 100/10s:20)."""
    rate_limit_writes: str = "5/s:20,50/s:150"
    """Budget of every other POST/PUT/PATCH/DELETE under /v1, as `USER,IP`."""
    rate_limit_reads: str = "20/s:60,200/s:600"
    """Budget of GET under /v1, as `USER,IP`."""
    rate_limit_stream: str = "1/s:5,20/s:60"
    """Budget of `/v1/stream` (opening an SSE stream, creating its ticket), as `USER,IP`."""

    @field_validator("kv_url")
    @classmethod
    def _known_kv_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in KV_SCHEMES:
            raise ValueError(f"unknown KV scheme {scheme!r}: use memory:// or redis://host:6379/0")
        return value

    @field_validator("db_url")
    @classmethod
    def _known_sql_scheme(cls, value: str) -> str:
        scheme = urlsplit(value).scheme.split("+")[0]
        if scheme not in SQL_SCHEMES:
            raise ValueError(
                f"unknown SQL scheme {scheme!r}: use sqlite:///dir/shard-{{shard}}.db "
                "or postgresql://host/dropsim_{shard}"
            )
        return value

    @field_validator(
        "rate_limit_orders", "rate_limit_writes", "rate_limit_reads", "rate_limit_stream"
    )
    @classmethod
    def _class_limits(cls, value: str) -> str:
        ClassLimits.parse(value)  # raises ValueError with the expected form
        return value

    @model_validator(mode="after")
    def _shard_placeholder(self) -> Settings:
        if self.shards > 1 and "{shard}" not in self.db_url:
            raise ValueError("db_url needs a {shard} placeholder when shards > 1")
        return self

    @model_validator(mode="after")
    def _provider_latency_order(self) -> Settings:
        if self.provider_latency_p99_ms < self.provider_latency_median_ms:
            raise ValueError("provider_latency_p99_ms must not be below provider_latency_median_ms")
        return self

    @property
    def embedded_kv(self) -> bool:
        """True when the KV store lives in this process's memory (one process only)."""
        return self.kv_url.startswith("memory://")

    @property
    def embedded_db(self) -> bool:
        """True when the SQL shards are SQLite files (no server shares them between processes)."""
        return self.db_url.startswith("sqlite")

    def signing_secret(self) -> str:
        """The JWT secret: the configured one, or one kept in the data dir for CLI and server."""
        if self.jwt_secret:
            return self.jwt_secret
        return _kept_secret(self.data_dir / "jwt-secret")

    def payment_secret(self) -> str:
        """The callback signing secret: the configured one, or one kept in the data dir so every
        server process (and the embedded provider) agrees on it."""
        if self.payment_signing_secret:
            return self.payment_signing_secret
        return _kept_secret(self.data_dir / "payment-secret")


def _kept_secret(path: Path) -> str:
    """The secret stored at `path`, created (0600) by whichever process gets there first.

    The file appears complete or not at all (written aside, then hard-linked into place), so a
    concurrent reader never sees it empty.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        with os.fdopen(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            draft.unlink()
    return path.read_text().strip()


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, `overrides` (CLI flags) on top; one clear error if invalid."""
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigurationError(f"{field}: {message}") from None
