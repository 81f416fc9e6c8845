"""Authentication for `/v1`: JWT bearer tokens (Litestar's JWTAuth) and role guards."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.security.jwt import JWTAuth, Token

from dropsim.accounts.models import Role
from dropsim.gateway.tokens import ALGORITHM, Principal, principal_from_token

PUBLIC_PATHS = [
    r"^/$",
    r"^/static",
    r"^/health",
    r"^/schema",
    r"^/metrics",
    r"^/v1/auth/",
]
"""Paths anyone may call; public catalog reads opt out per route with `exclude_from_auth=True`."""


async def _retrieve_principal(token: Token, _: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    principal = principal_from_token(token)
    if principal is None:
        raise NotAuthorizedException("token has no valid role")
    return principal


def jwt_auth(secret: str) -> JWTAuth[Principal, Token]:
    """The bearer-token middleware configuration for the app."""
    return JWTAuth[Principal, Token](
        token_secret=secret,
        algorithm=ALGORITHM,
        retrieve_user_handler=_retrieve_principal,
        exclude=PUBLIC_PATHS,
    )


def requires(*roles: Role) -> Any:
    """A guard that lets only `roles` (and admins) through."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        principal = connection.user
        if not isinstance(principal, Principal):
            raise NotAuthorizedException("sign in first")
        if principal.role not in roles and principal.role is not Role.ADMIN:
            wanted = " or ".join(role.value for role in roles)
            raise PermissionDeniedException(f"this needs the {wanted} role")

    return guard
