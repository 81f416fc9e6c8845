"""The drop page route: API composition for one drop, public, with the viewer's state when the
caller sends a bearer token."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath

from dropsim.gateway.auth import bearer_principal
from dropsim.gateway.composition import DropPage, DropPageComposer
from dropsim.gateway.tokens import TokenIssuer


def viewer_id(request: Request[Any, Any, State], tokens: TokenIssuer) -> str | None:
    """The signed-in caller's user id; None for a caller who sends no Authorization header."""
    principal = bearer_principal(request, tokens)
    return None if principal is None else principal.user_id


@get("/drops/{drop_id:str}/page", exclude_from_auth=True)
async def drop_page(
    drop_id: FromPath[str],
    request: Request[Any, Any, State],
    drop_pages: NamedDependency[DropPageComposer],
    token_issuer: NamedDependency[TokenIssuer],
) -> DropPage:
    """The drop, its product, its creator, live stock and (signed in) the viewer's follow state
    and orders of it, in one call. Parts that fail are null and listed in `errors`."""
    return await drop_pages.page(drop_id, viewer_id(request, token_issuer))


def composition_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1", route_handlers=[drop_page], dependencies=dependencies, tags=["gateway"]
    )
