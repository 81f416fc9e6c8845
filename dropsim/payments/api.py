"""HTTP route the payment provider calls back: signed events in, 200 once they are applied."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Router, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from dropsim.payments.service import PaymentService
from dropsim.payments.signing import SIGNATURE_HEADER


class CallbackReceipt(msgspec.Struct):
    status: str
    """`processed`, `duplicate` (seen before: nothing done) or `ignored` (nothing to do)."""


@post("/payments/callback", status_code=200, exclude_from_auth=True)
async def payment_callback(
    request: Request[Any, Any, State], payment_service: NamedDependency[PaymentService]
) -> CallbackReceipt:
    """Receive a provider event. The body is read raw: the signature covers its exact bytes.
    A missing, malformed, wrong or stale signature is a 400 with code `missing_signature`,
    `malformed_signature`, `bad_signature` or `stale_signature`."""
    body = await request.body()
    outcome = await payment_service.handle_callback(body, request.headers.get(SIGNATURE_HEADER))
    return CallbackReceipt(status=outcome.value)


def payments_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[payment_callback],
        dependencies=dependencies,
        tags=["payments"],
    )
