"""The order lane: `POST /v1/drops/{id}/orders` answered in front of Litestar's router.

In a rush nearly every request is an order, and most of what an order costs inside the
framework is not the order: routing, the middleware stack, signature parsing, dependency
injection, Request and Response objects. The lane answers a well-formed order itself, with the
pieces the route is made of: the token verifier, the gateway's rate limiter, the order
service, the answer's bytes (`orders.api.answer`) and the request metrics, so its response is
the route's, byte for byte.

Everything else is handed to Litestar unchanged (with the body the lane read replayed), so
every error keeps its single source: no or a bad token, another method or path, a body that is
too long or not an order, no or a too long Idempotency-Key, a server still starting. The lane
decides that before anything happens; from the rate limiter's check on, it answers.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send

from dropsim.errors import DomainError
from dropsim.gateway.problems import INTERNAL_ERROR_DETAIL, PROBLEM_JSON, problem_body
from dropsim.gateway.ratelimit import RateLimitMiddleware
from dropsim.gateway.request_metrics import measured
from dropsim.gateway.tokens import Principal, TokenIssuer
from dropsim.orders.api import MAX_ORDER_BODY, ORDER_PATH, REPLAYED, answer, parse_order
from dropsim.orders.idempotency import MAX_KEY_LENGTH, fingerprint
from dropsim.orders.service import OrderService

logger = logging.getLogger("dropsim.errors")

_PREFIX, _SUFFIX = "/v1/drops/", "/orders"
_CALL = "dropsim.order"
"""Where in the scope the lane leaves the order it read, for its measured half."""
_REPLAYED = (REPLAYED.lower().encode(), b"true")


def drop_of(path: str) -> str | None:
    """The drop id in an order route's path (`/v1/drops/{drop_id}/orders`), else None."""
    if not (path.startswith(_PREFIX) and path.endswith(_SUFFIX)):
        return None
    drop_id = path[len(_PREFIX) : -len(_SUFFIX)]
    return drop_id if drop_id and "/" not in drop_id else None


@dataclass(frozen=True, slots=True)
class _OrderCall:
    """A well-formed order request, as read before anything is done about it."""

    principal: Principal
    drop_id: str
    key: str
    quantity: int
    fingerprint: str


class OrderLane:
    """An ASGI app in front of Litestar's own handler (see the module docstring). Built in
    `create_app`; `connect`ed to the services once the app's lifespan has built them."""

    def __init__(
        self,
        rate_limit: RateLimitMiddleware,
        response_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self._limiter = rate_limit
        self._headers = response_headers
        self._tokens: TokenIssuer | None = None
        self._orders: OrderService | None = None
        self._litestar: ASGIApp | None = None

    def in_front_of(self, litestar: ASGIApp) -> OrderLane:
        """Hand everything the lane does not answer to `litestar` (the app's ASGI handler)."""
        self._litestar = litestar
        return self

    def connect(self, tokens: TokenIssuer, orders: OrderService) -> None:
        self._tokens, self._orders = tokens, orders

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._litestar is None:
            raise RuntimeError("the order lane stands in front of nothing")
        if scope["type"] != ScopeType.HTTP or scope["method"] != "POST" or self._tokens is None:
            await self._litestar(scope, receive, send)
            return
        drop_id = drop_of(scope["path"])
        if drop_id is None:
            await self._litestar(scope, receive, send)
            return
        read, raw = await _read_body(receive)
        call = None if raw is None else self._order_call(scope, drop_id, raw)
        if call is None:
            await self._litestar(scope, _replaying(read, receive), send)
            return
        scope.setdefault("state", {})[_CALL] = call
        await measured("POST", ORDER_PATH, self._answer, scope, receive, send)

    def _order_call(self, scope: Scope, drop_id: str, raw: bytes) -> _OrderCall | None:
        """The order in this request, or None to hand it over (every refusal is Litestar's)."""
        assert self._tokens is not None
        authorization = key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value.decode("latin-1")
            elif name == b"idempotency-key":
                if key is not None:
                    return None
                key = value.decode("latin-1")
        if authorization is None or not key or len(key) > MAX_KEY_LENGTH:
            return None
        scheme, _, encoded = authorization.partition(" ")
        if scheme != "Bearer":
            return None
        try:
            principal = self._tokens.verify(encoded)
            body = parse_order(raw)
        except Exception:  # (a bad token or body: Litestar refuses it, as it always has)
            return None
        path = scope.get("root_path", "") + scope["path"]
        return _OrderCall(principal, drop_id, key, body.quantity, fingerprint("POST", path, raw))

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The measured half: limit, place, answer (as the route's middleware and handler)."""
        assert self._orders is not None
        call: _OrderCall = scope["state"][_CALL]
        headers: list[tuple[bytes, bytes]] = []
        try:
            admission = await self._limiter.admit(scope, ORDER_PATH, call.principal)
            if admission is not None:
                if not admission.allowed:
                    await admission.refuse(send)
                    return
                headers += admission.headers
            placed = await self._orders.place_order(
                call.principal, call.drop_id, call.key, call.quantity, call.fingerprint
            )
            result = answer(placed)
            status, body, media_type = result.status, result.body, result.media_type
            headers += self._headers  # (as Litestar: on the route's answers, not on errors)
            if result.replayed:
                headers.append(_REPLAYED)
        except DomainError as exc:
            status, media_type = exc.status, PROBLEM_JSON
            body = problem_body(exc.status, exc.code, exc.detail, title=exc.title)
        except Exception:
            logger.exception("unhandled error on POST %s", scope["path"])
            status, media_type = 500, PROBLEM_JSON
            body = problem_body(500, "internal_error", INTERNAL_ERROR_DETAIL)
        headers += ((b"content-type", media_type.encode()), (b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive) -> tuple[list[ReceiveMessage], bytes | None]:
    """The messages read, and the whole body if it came within an order's size (else None)."""
    read: list[ReceiveMessage] = []
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            return read, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_ORDER_BODY:
            return read, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return read, b"".join(chunks)


def _replaying(read: list[ReceiveMessage], receive: Receive) -> Receive:
    """`receive` that first gives back the messages the lane already read."""
    pending = deque(read)

    async def replay() -> Any:
        if pending:
            return pending.popleft()
        return await receive()

    return replay


__all__ = ["OrderLane", "drop_of"]
