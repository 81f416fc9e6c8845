"""Authentication for `/v1`: JWT bearer tokens (Litestar's JWTAuth) and role guards."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTAuth, JWTAuthenticationMiddleware, Token

from dropsim.accounts.models import Role
from dropsim.errors import AuthenticationFailed
from dropsim.gateway.tokens import (
    ALGORITHM,
    Principal,
    TokenIssuer,
    VerifiedTokens,
    principal_from_token,
)

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


class CachedJWTMiddleware(JWTAuthenticationMiddleware):
    """Litestar's JWT middleware that verifies each distinct token once, not on every request
    (see `VerifiedTokens`); a remembered token is still refused once its `exp` has passed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verified: VerifiedTokens[AuthenticationResult] = VerifiedTokens()

    async def authenticate_token(
        self, encoded_token: str, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        known = self._verified.get(encoded_token)
        if known is not None:
            return known
        result = await super().authenticate_token(encoded_token, connection)
        self._verified.put(encoded_token, result.auth.exp.timestamp(), result)
        return result


def jwt_auth(secret: str) -> JWTAuth[Principal, Token]:
    """The bearer-token middleware configuration for the app."""
    return JWTAuth[Principal, Token](
        token_secret=secret,
        algorithm=ALGORITHM,
        retrieve_user_handler=_retrieve_principal,
        exclude=PUBLIC_PATHS,
        authentication_middleware_class=CachedJWTMiddleware,
    )


def bearer_principal(
    connection: ASGIConnection[Any, Any, Any, Any], tokens: TokenIssuer
) -> Principal | None:
    """The caller named by the `Authorization: Bearer` header, for routes the bearer middleware
    skips (public pages, the event stream); None when no Authorization header was sent.
    AuthenticationFailed for another scheme or a forged, expired or foreign token."""
    header = connection.headers.get("authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "bearer" or not encoded.strip():
        raise AuthenticationFailed("send `Authorization: Bearer <token>`", code="invalid_token")
    return tokens.verify(encoded.strip())


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
