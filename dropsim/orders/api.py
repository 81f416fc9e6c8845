"""HTTP routes of the order service: the idempotent order route, order reads, audit, reconcile."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.security.jwt import Token

from dropsim.accounts.models import Role
from dropsim.errors import InvalidRequest
from dropsim.gateway.auth import requires
from dropsim.gateway.problems import problem
from dropsim.gateway.tokens import Principal
from dropsim.orders.audit import Auditor, DropAudit
from dropsim.orders.idempotency import fingerprint
from dropsim.orders.models import REJECTION_DETAIL, Order
from dropsim.orders.reconcile import Rebuilt, Reconciler
from dropsim.orders.service import OrderService, PlacedOrder
from dropsim.pagination import Page, PageSize, decode_cursor, page_of

REPLAYED = "Idempotency-Replayed"
MAX_ORDER_BODY = 1024


class OrderRequest(msgspec.Struct, forbid_unknown_fields=True):
    quantity: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1


class ReconcileRequest(msgspec.Struct, forbid_unknown_fields=True):
    drop_ids: list[str] | None = None
    only_missing: bool = False


_decode_order = msgspec.json.Decoder(OrderRequest)


def _parse(raw: bytes) -> OrderRequest:
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


def _response(placed: PlacedOrder) -> Response[Any]:
    headers = {REPLAYED: "true"} if placed.replayed else {}
    if placed.rejection is not None:
        return problem(
            placed.status,
            placed.rejection.value,
            REJECTION_DETAIL[placed.rejection],
            headers=headers,
        )
    if placed.stored_body is not None:
        return Response(
            placed.stored_body.encode(),
            status_code=placed.status,
            media_type="application/json",
            headers=headers,
        )
    return Response(placed.order, status_code=placed.status, headers=headers)


@post("/drops/{drop_id:str}/orders", status_code=201)
async def place_order(
    drop_id: FromPath[str],
    request: Request[Principal, Token, State],
    order_service: NamedDependency[OrderService],
) -> Response[Any]:
    """Order units of a drop. Send a fresh `Idempotency-Key` per purchase and repeat it on retry."""
    raw = await request.body()
    body = _parse(raw)
    placed = await order_service.place_order(
        request.user,
        drop_id,
        request.headers.get("idempotency-key"),
        body.quantity,
        fingerprint("POST", request.url.path, raw),
    )
    return _response(placed)


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
