"""Rate limiting at the gateway: per user and per client IP, per route class, one Redis call.

Headers follow draft-ietf-httpapi-ratelimit-headers-08 (structured fields), on every limited
response, allowed or refused:

    RateLimit-Policy: "orders-user";q=5;w=5, "orders-ip";q=60;w=3
    RateLimit: "orders-user";r=0;t=5, "orders-ip";r=55;t=1

`q` is the burst, `w` the seconds an empty budget takes to refill, `r` what is left now and `t`
the seconds until the budget is full again. A refusal is a 429 problem with `Retry-After`: the
whole seconds (rounded up) until every budget admits one more request.

Middleware order: this runs inside the JWT middleware (which Litestar puts first), so an
authenticated request arrives with its `Principal` in `scope["user"]`, verified once; public
routes (no authentication) and anonymous callers are limited by address only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter

from dropsim.gateway.gcra import Decision, RateGate
from dropsim.gateway.limits import ClassLimits, Limit, RateLimitConfig, RouteClass, route_class_of
from dropsim.gateway.problems import PROBLEM_JSON, problem_body
from dropsim.gateway.tokens import Principal
from dropsim.metrics import RATE_LIMITED
from dropsim.ports import KeyValueStore
from dropsim.settings import Settings

FORWARDED_FOR = b"x-forwarded-for"


def rate_limit_config(settings: Settings) -> RateLimitConfig:
    """The limiter's configuration from the settings."""
    return RateLimitConfig(
        limits={
            RouteClass.ORDERS: ClassLimits.parse(settings.rate_limit_orders),
            RouteClass.WRITES: ClassLimits.parse(settings.rate_limit_writes),
            RouteClass.READS: ClassLimits.parse(settings.rate_limit_reads),
            RouteClass.STREAM: ClassLimits.parse(settings.rate_limit_stream),
        },
        enabled=settings.rate_limit_enabled,
        trusted_proxies=settings.rate_limit_trusted_proxies,
    )


def _policy_item(name: str, limit: Limit) -> str:
    return f'"{name}";q={limit.burst};w={limit.window_seconds}'


def _seconds(microseconds: int) -> int:
    return math.ceil(microseconds / 1_000_000)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything about one route class that does not change between requests."""

    route_class: RouteClass
    user_policy_name: str
    ip_policy_name: str
    user_prefix: str
    ip_prefix: str
    user_limit: Limit
    ip_limit: Limit
    user_policy: bytes
    """`RateLimit-Policy` for a signed-in caller (both budgets)."""
    ip_policy: bytes
    """`RateLimit-Policy` for an anonymous caller (the address's budget only)."""
    refused_by_user: Counter
    refused_by_ip: Counter

    @classmethod
    def build(cls, route_class: RouteClass, limits: ClassLimits, prefix: str) -> _Plan:
        user, ip = f"{route_class}-user", f"{route_class}-ip"
        policy = f"{_policy_item(user, limits.user)}, {_policy_item(ip, limits.ip)}"
        return cls(
            route_class=route_class,
            user_policy_name=user,
            ip_policy_name=ip,
            user_prefix=f"{prefix}:{route_class}:u:",
            ip_prefix=f"{prefix}:{route_class}:ip:",
            user_limit=limits.user,
            ip_limit=limits.ip,
            user_policy=policy.encode(),
            ip_policy=_policy_item(ip, limits.ip).encode(),
            refused_by_user=RATE_LIMITED.labels(route_class=route_class.value, scope="user"),
            refused_by_ip=RATE_LIMITED.labels(route_class=route_class.value, scope="ip"),
        )

    def state(self, decision: Decision, signed_in: bool) -> bytes:
        """The `RateLimit` field: each budget's remaining requests and seconds to full."""
        names = (
            (self.user_policy_name, self.ip_policy_name) if signed_in else (self.ip_policy_name,)
        )
        return ", ".join(
            f'"{name}";r={budget.remaining};t={_seconds(budget.reset_us)}'
            for name, budget in zip(names, decision.budgets, strict=True)
        ).encode()


class RateLimitMiddleware(ASGIMiddleware):
    """Refuses a request with 429 once its user's or its address's budget for the route's class
    is spent; shared by every server process through the KV store (at most one script call a
    request: concurrent requests share one, see `RateGate`).

    Built in `create_app`, then `connect`ed to the KV store when the app's lifespan opens it.
    """

    scopes = (ScopeType.HTTP,)

    def __init__(self, config: RateLimitConfig) -> None:
        self._config = config
        self._plans = {
            route_class: _Plan.build(route_class, limits, config.key_prefix)
            for route_class, limits in config.limits.items()
        }
        # (method, path template) -> plan or None (not limited); filled on first sight of a route
        self._routes: dict[tuple[str, str], _Plan | None] = {}
        self._gate: RateGate | None = None

    def connect(self, kv: KeyValueStore) -> None:
        """Use `kv` from now on (called at start-up, once the backends are open)."""
        self._gate = RateGate(kv)

    def _plan(self, method: str, path_template: str) -> _Plan | None:
        route = (method, path_template)
        try:
            return self._routes[route]
        except KeyError:
            route_class = route_class_of(method, path_template)
            plan = None if route_class is None else self._plans.get(route_class)
            self._routes[route] = plan
            return plan

    def client_address(self, scope: Scope) -> str:
        """The caller's address: the TCP peer, or with N trusted proxies the N-th entry from the
        right of `X-Forwarded-For` (entries further left are whatever the client wrote)."""
        hops = self._config.trusted_proxies
        if hops:
            for name, value in scope["headers"]:
                if name == FORWARDED_FOR:
                    entries = value.decode("latin-1").split(",")
                    if len(entries) >= hops:
                        return entries[-hops].strip()
                    break
        client = scope.get("client")
        return client[0] if client else "unknown"

    async def admit(
        self, scope: Scope, path_template: str, principal: Principal | None
    ) -> Admission | None:
        """The verdict on a request to the route `path_template` from `principal` (None:
        anonymous), or None when that route is not limited or limiting is off."""
        if not self._config.enabled:
            return None
        plan = self._plan(scope["method"], path_template)  # type: ignore[typeddict-item]
        if plan is None:
            return None
        if self._gate is None:
            raise RuntimeError("the rate limiter is not connected to the KV store")
        address = self.client_address(scope)
        budgets: Sequence[tuple[str, Limit]]
        if principal is not None:
            budgets = (
                (plan.user_prefix + principal.user_id, plan.user_limit),
                (plan.ip_prefix + address, plan.ip_limit),
            )
        else:
            budgets = ((plan.ip_prefix + address, plan.ip_limit),)
        decision = await self._gate.check(budgets)
        signed_in = principal is not None
        headers = [
            (b"ratelimit-policy", plan.user_policy if signed_in else plan.ip_policy),
            (b"ratelimit", plan.state(decision, signed_in)),
        ]
        return Admission(decision.allowed, headers, plan, decision, signed_in)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        user = scope.get("user")
        principal = user if isinstance(user, Principal) else None
        admission = await self.admit(scope, scope["path_template"], principal)
        if admission is None:
            await next_app(scope, receive, send)
            return
        if not admission.allowed:
            await admission.refuse(send)
            return
        headers = admission.headers

        async def send_with_state(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await next_app(scope, receive, send_with_state)


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's verdict on one request, and the `RateLimit` headers its answer carries."""

    allowed: bool
    headers: list[tuple[bytes, bytes]]
    plan: _Plan
    decision: Decision
    signed_in: bool

    async def refuse(self, send: Send) -> None:
        """Answer 429 with a problem body; count it against the budget that refused (the
        user's when both did, since that one is the caller's own doing)."""
        plan, decision = self.plan, self.decision
        by_user = self.signed_in and decision.budgets[0].wait_us > 0
        scope = "user" if by_user else "ip"
        (plan.refused_by_user if by_user else plan.refused_by_ip).inc()
        retry_after = max(1, _seconds(decision.retry_after_us))
        who = "this user" if by_user else "this address"
        body = problem_body(
            429,
            "rate_limited",
            f"too many {plan.route_class} requests from {who}; retry in {retry_after} s",
            title="Too Many Requests",
            route_class=plan.route_class.value,
            scope=scope,
            retry_after=retry_after,
        )
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(retry_after).encode()),
                    *self.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


__all__ = ["Admission", "RateLimitMiddleware", "rate_limit_config"]
