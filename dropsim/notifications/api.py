"""HTTP routes of the notification service: stream tickets, the SSE stream, the inbox."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery
from litestar.security.jwt import Token

from dropsim.errors import AuthenticationFailed, InvalidRequest
from dropsim.events import Envelope
from dropsim.gateway.auth import bearer_principal
from dropsim.gateway.problems import problem
from dropsim.gateway.tokens import Principal, TokenIssuer
from dropsim.notifications.service import NotificationService, StreamsFull
from dropsim.notifications.streaming import EventStream

AuthedRequest = Request[Principal, Token, State]
Limit = Annotated[int, msgspec.Meta(ge=1, le=200)]
_DROP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class StreamTicket(msgspec.Struct):
    """Use in `/v1/stream?ticket=...` within `expires_in_seconds`; it works once."""

    ticket: str
    expires_in_seconds: int


class Inbox(msgspec.Struct):
    items: list[Envelope]
    """Drop alerts as `{id, type, at, data}`, the envelope of the stream's events."""


@post("/stream/tickets", status_code=201)
async def issue_stream_ticket(
    request: AuthedRequest, notification_service: NamedDependency[NotificationService]
) -> StreamTicket:
    """A one-time ticket to open a stream from a browser (EventSource sends no headers)."""
    ticket = await notification_service.issue_ticket(request.user.user_id)
    return StreamTicket(ticket=ticket, expires_in_seconds=notification_service.ticket_seconds)


@get("/stream", exclude_from_auth=True)
async def stream(
    request: Request[Any, Any, State],
    notification_service: NamedDependency[NotificationService],
    token_issuer: NamedDependency[TokenIssuer],
    ticket: FromQuery[str | None] = None,
    drops: FromQuery[str | None] = None,
    last_event_id: FromQuery[str | None] = None,
) -> Response[Any]:
    """Server-Sent Events for the caller: drop alerts of creators they follow, coalesced stock
    updates and sold-out for the `drops` they watch (comma-separated ids), their own order
    outcomes. Authenticate with `ticket` (browsers) or a bearer token (other clients). Resumes
    after the `Last-Event-ID` header (or `last_event_id`) without gaps or duplicates."""
    user_id = await _caller(request, notification_service, token_issuer, ticket)
    drop_ids = _drop_ids(drops)
    resume_from = request.headers.get("last-event-id") or last_event_id
    try:
        subscriber, frames = await notification_service.open_stream(user_id, drop_ids, resume_from)
    except StreamsFull as full:
        return problem(
            full.status,
            full.code,
            full.detail,
            title=full.title,
            headers={"Retry-After": str(full.retry_after_seconds)},
        )
    return EventStream(frames, subscriber)


@get("/me/notifications")
async def inbox(
    request: AuthedRequest,
    notification_service: NamedDependency[NotificationService],
    before: FromQuery[float | None] = None,
    limit: Limit = 50,
) -> Inbox:
    """Drop alerts of the creators the caller follows, newest first; page with `before` (the
    `at` of the last item seen)."""
    items = await notification_service.inbox(request.user.user_id, before=before, limit=limit)
    return Inbox(items=items)


async def _caller(
    request: Request[Any, Any, State],
    notifications: NotificationService,
    tokens: TokenIssuer,
    ticket: str | None,
) -> str:
    if ticket:
        return await notifications.redeem_ticket(ticket)
    principal = bearer_principal(request, tokens)
    if principal is not None:
        return principal.user_id
    raise AuthenticationFailed(
        "open a stream with ?ticket= (POST /v1/stream/tickets) or an Authorization bearer token",
        code="authentication_required",
    )


def _drop_ids(drops: str | None) -> list[str]:
    if not drops:
        return []
    ids = [drop_id.strip() for drop_id in drops.split(",") if drop_id.strip()]
    for drop_id in ids:
        if not _DROP_ID.match(drop_id):
            raise InvalidRequest(f"drops: {drop_id!r} is not a drop id", code="invalid_request")
    return list(dict.fromkeys(ids))


def notifications_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[issue_stream_ticket, stream, inbox],
        dependencies=dependencies,
        tags=["notifications"],
    )
