"""Access tokens: JWTs (HS256) carrying the user id and role, minted by the server or the CLI."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from litestar.exceptions import NotAuthorizedException
from litestar.security.jwt import Token

from dropsim.accounts.models import Role
from dropsim.errors import AuthenticationFailed

ALGORITHM = "HS256"
VERIFIED_TOKENS = 50_000
"""How many verified tokens a process remembers (a rush re-sends the same few thousand)."""

Verified = TypeVar("Verified")


class VerifiedTokens(Generic[Verified]):
    """What verifying each token gave, kept until the token expires: a buyer in a rush sends
    the same token many times a second, and HS256 verification with claim parsing is most of an
    authenticated request's cost. The oldest entries go first past `capacity`."""

    def __init__(self, capacity: int = VERIFIED_TOKENS) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[float, Verified]] = OrderedDict()

    def get(self, encoded: str) -> Verified | None:
        known = self._entries.get(encoded)
        if known is None or known[0] <= time.time():
            return None
        return known[1]

    def put(self, encoded: str, expires_at: float, verified: Verified) -> None:
        self._entries[encoded] = (expires_at, verified)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the token says (no database read per request)."""

    user_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class TokenIssuer:
    """Signs tokens with the shared secret; the server and `dropsim token` use the same one."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_seconds)
        self._verified: VerifiedTokens[Principal] = VerifiedTokens()

    def issue(self, user_id: str, role: Role, *, ttl_seconds: int | None = None) -> str:
        ttl = self._ttl if ttl_seconds is None else timedelta(seconds=ttl_seconds)
        token = Token(
            sub=user_id,
            exp=datetime.now(UTC) + ttl,
            extras={"role": role.value},
        )
        return token.encode(secret=self._secret, algorithm=ALGORITHM)

    def verify(self, encoded: str) -> Principal:
        """Who a token names, for routes where signing in is optional (the auth middleware
        skips them); AuthenticationFailed if it is forged, expired or not ours. Each distinct
        token is verified once (see `VerifiedTokens`)."""
        known = self._verified.get(encoded)
        if known is not None:
            return known
        try:
            token = Token.decode(encoded, secret=self._secret, algorithm=ALGORITHM)
        except NotAuthorizedException:
            token = None
        principal = None if token is None else principal_from_token(token)
        if token is None or principal is None:
            raise AuthenticationFailed(
                "the bearer token is invalid or expired", code="invalid_token"
            )
        self._verified.put(encoded, token.exp.timestamp(), principal)
        return principal


def principal_from_token(token: Token) -> Principal | None:
    """The principal a verified token names, or None if its claims are not ours."""
    try:
        return Principal(user_id=token.sub, role=Role(token.extras.get("role", "")))
    except ValueError:
        return None
