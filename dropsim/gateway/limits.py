"""What the gateway's rate limiter allows: route classes, their (rate, burst) limits, and the
config the middleware is built from. Pure data: no Litestar, no Redis."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import StrEnum


class RouteClass(StrEnum):
    """Routes that share one budget; each class has its own limits."""

    ORDERS = "orders"
    """`POST /v1/drops/{id}/orders`: strict, a rush is made of these."""
    WRITES = "writes"
    """Every other POST, PUT, PATCH and DELETE under `/v1` (sign-up and log-in included)."""
    READS = "reads"
    """GET (and HEAD, OPTIONS) under `/v1`: generous."""
    STREAM = "stream"
    """`/v1/stream...`: opening a Server-Sent Events stream and creating its ticket."""


UNLIMITED_PATHS = frozenset({"/v1/payments/callback"})
"""Under `/v1` but never limited: the provider's callback is signed and must always get through."""

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def route_class_of(method: str, path_template: str) -> RouteClass | None:
    """The class of a route (by its template, e.g. `/v1/drops/{drop_id:str}/orders`), or None
    when it is not limited: anything outside `/v1` (health, metrics, the page, the OpenAPI
    schema) and the payment callback. Called once per route and method, then remembered."""
    if not path_template.startswith("/v1/") or path_template in UNLIMITED_PATHS:
        return None
    if path_template == "/v1/stream" or path_template.startswith("/v1/stream/"):
        return RouteClass.STREAM
    if method in READ_METHODS:
        return RouteClass.READS
    if (
        method == "POST"
        and path_template.startswith("/v1/drops/")
        and path_template.endswith("/orders")
    ):
        return RouteClass.ORDERS
    return RouteClass.WRITES


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*([smh])\s*:\s*(\d+)\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    """A GCRA limit: `burst` requests at once, then one every `interval_us` microseconds."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a limit needs a rate above 0 and a burst of at least 1")

    @property
    def interval_us(self) -> int:
        """The emission interval: one request's worth of budget comes back every this long."""
        return max(1, round(1_000_000 / self.per_second))

    @property
    def window_seconds(self) -> int:
        """Seconds an empty budget takes to refill completely (the draft's `w`), rounded up."""
        return max(1, math.ceil(self.burst * self.interval_us / 1_000_000))

    @classmethod
    def parse(cls, text: str) -> Limit:
        """`RATE/UNIT:BURST`, e.g. `5/s:10` (5 a second, bursts of 10), `30/m:5`, `100/10s:20`."""
        match = _LIMIT.match(text)
        if match is None:
            raise ValueError(f"{text!r} is not RATE/UNIT:BURST (e.g. 5/s:10, 30/m:5)")
        count, multiple, unit, burst = match.groups()
        seconds = _UNITS[unit] * (int(multiple) if multiple else 1)
        return cls(per_second=float(count) / seconds, burst=int(burst))


@dataclass(frozen=True, slots=True)
class ClassLimits:
    """The two budgets of one route class: each user's, and each client IP's."""

    user: Limit
    ip: Limit

    @classmethod
    def parse(cls, text: str) -> ClassLimits:
        """`USER,IP`, each `RATE/UNIT:BURST`: `1/s:5,20/s:60` gives every user 1/s in bursts of 5
        and every client address 20/s in bursts of 60 (users behind one NAT share that)."""
        parts = text.split(",")
        if len(parts) != 2:
            raise ValueError(f"{text!r} is not USER,IP (e.g. 1/s:5,20/s:60)")
        return cls(user=Limit.parse(parts[0]), ip=Limit.parse(parts[1]))


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """How the gateway limits requests (built from Settings in app.py)."""

    limits: dict[RouteClass, ClassLimits]
    """The budgets of each route class."""
    enabled: bool = True
    """False lets every request through without a Redis call and without RateLimit headers."""
    trusted_proxies: int = 0
    """How many reverse proxies in front of the server append to `X-Forwarded-For`: 0 ignores
    the header (the TCP peer is the client); N takes the N-th address from its right end."""
    key_prefix: str = "rl"
    """Namespace of the limiter's Redis keys."""
