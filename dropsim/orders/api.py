"""HTTP routes of the order service: the idempotent order route, order reads, audit, reconcile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.security.jwt import Token

from dropsim.accounts.models import Role
from dropsim.errors import InvalidRequest
from dropsim.gateway.auth import requires
from dropsim.gateway.problems import PROBLEM_JSON, problem_body
from dropsim.gateway.tokens import Principal
from dropsim.orders.audit import Auditor, DropAudit
from dropsim.orders.idempotency import fingerprint
from dropsim.orders.models import REJECTION_DETAIL, Order
from dropsim.orders.reconcile import Rebuilt, Reconciler
from dropsim.orders.service import OrderService, PlacedOrder
from dropsim.pagination import Page, PageSize, decode_cursor, page_of

ORDER_PATH = "/v1/drops/{drop_id}/orders"
"""The order route's template, as Litestar names it in metrics and the rate limiter's plans."""
REPLAYED = "Idempotency-Replayed"
MAX_ORDER_BODY = 1024


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class ReconcileRequest(msgspec.Struct, forbid_unknown_fields=True):
    drop_ids: list[str] | None = None
    only_missing: bool = False


_decode_order = msgspec.json.Decoder(OrderRequest)


def parse_order(raw: bytes) -> OrderRequest:
    """The order body ({} or empty means one unit); bad input is refused before any key is used."""
    if not raw.strip():
        return OrderRequest()
    if len(raw) > MAX_ORDER_BODY:
        raise InvalidRequest(
            'an order body is a few bytes: {"quantity": 1}', code="invalid_request"
        )
    try:
        return _decode_order.decode(raw)
    except msgspec.DecodeError as exc:
        code = "invalid_request" if isinstance(exc, msgspec.ValidationError) else "malformed_json"
        raise InvalidRequest(str(exc), code=code) from None


@dataclass(frozen=True, slots=True)
class OrderAnswer:
    """What the order route answers, as bytes: the same whichever way the request came in
    (the Litestar route below, or the gateway's order lane)."""

    status: int
    body: bytes
    media_type: str
    replayed: bool


def answer(placed: PlacedOrder) -> OrderAnswer:
    """The answer to a placed (or refused, or replayed) order."""
    if placed.rejection is not None:
        rejection = placed.rejection
        body = problem_body(placed.status, rejection.value, REJECTION_DETAIL[rejection])
        return OrderAnswer(placed.status, body, PROBLEM_JSON, placed.replayed)
    if placed.stored_body is not None:
        body = placed.stored_body.encode()
    else:
        body = msgspec.json.encode(placed.order)
    return OrderAnswer(placed.status, body, MediaType.JSON, placed.replayed)


@post("/drops/{drop_id:str}/orders", status_code=201)
async def place_order(
    drop_id: FromPath[str],
    request: Request[Principal, Token, State],
    order_service: NamedDependency[OrderService],
) -> Response[Any]:
    """Order units of a drop. Send a fresh `Idempotency-Key` per purchase and repeat it on retry."""
    raw = await request.body()
    body = parse_order(raw)
    placed = await order_service.place_order(
        request.user,
        drop_id,
        request.headers.get("idempotency-key"),
        body.quantity,
        fingerprint("POST", request.url.path, raw),
    )
    result = answer(placed)
    return Response(
        result.body,
        status_code=result.status,
        media_type=result.media_type,
        headers={REPLAYED: "true"} if result.replayed else None,
    )


@get("/orders/{order_id:str}")
async def get_order(
    order_id: FromPath[str],
    request: Request[Principal, Token, State],
    order_service: NamedDependency[OrderService],
) -> Order:
    return await order_service.order(request.user, order_id)


@get("/me/orders")
async def my_orders(
    request: Request[Principal, Token, State],
    order_service: NamedDependency[OrderService],
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Order]:
    found = await order_service.orders(request.user, decode_cursor(cursor), limit + 1)
    return page_of(found, limit, key=lambda order: order.id)


@get("/admin/drops/{drop_id:str}/audit", guards=[requires(Role.ADMIN)])
async def audit_drop(drop_id: FromPath[str], auditor: NamedDependency[Auditor]) -> DropAudit:
    return await auditor.audit(drop_id)


@post("/admin/reconcile", status_code=200, guards=[requires(Role.ADMIN)])
async def reconcile(
    data: JSONBody[ReconcileRequest], reconciler: NamedDependency[Reconciler]
) -> list[Rebuilt]:
    return await reconciler.reconcile(only_missing=data.only_missing, drop_ids=data.drop_ids)


def orders_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[place_order, get_order, my_orders, audit_drop, reconcile],
        dependencies=dependencies,
        tags=["orders"],
    )
