"""HTTP routes for sign-up, log-in, the signed-in user, and admin token minting."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from litestar.security.jwt import Token

from dropsim.accounts.models import Role, User
from dropsim.accounts.service import AccountService
from dropsim.gateway.auth import requires
from dropsim.gateway.tokens import Principal, TokenIssuer

Email = Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]
Handle = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_.-]{2,40}$")]


class SignUp(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    handle: Handle


class LogIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Annotated[str, msgspec.Meta(max_length=256)]


class Session(msgspec.Struct):
    """A signed-in user and the bearer token to send as `Authorization: Bearer <token>`."""

    user: User
    access_token: str
    token_type: str = "bearer"


class MintTokens(msgspec.Struct, forbid_unknown_fields=True):
    user_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=100_000)]
    role: Role = Role.BUYER
    ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=7 * 24 * 3600)] = 24 * 3600


class MintedTokens(msgspec.Struct):
    tokens: dict[str, str]


@post("/auth/signup", status_code=201)
async def sign_up(
    data: JSONBody[SignUp],
    account_service: NamedDependency[AccountService],
    token_issuer: NamedDependency[TokenIssuer],
) -> Session:
    user = await account_service.sign_up(data.email, data.password, data.handle)
    return Session(user=user, access_token=token_issuer.issue(user.id, user.role))


@post("/auth/login", status_code=200)
async def log_in(
    data: JSONBody[LogIn],
    account_service: NamedDependency[AccountService],
    token_issuer: NamedDependency[TokenIssuer],
) -> Session:
    user = await account_service.log_in(data.email, data.password)
    return Session(user=user, access_token=token_issuer.issue(user.id, user.role))


@get("/me")
async def me(
    request: Request[Principal, Token, State], account_service: NamedDependency[AccountService]
) -> User:
    return await account_service.user(request.user.user_id)


@post("/admin/tokens", guards=[requires(Role.ADMIN)], status_code=200)
async def mint_tokens(
    data: JSONBody[MintTokens], token_issuer: NamedDependency[TokenIssuer]
) -> MintedTokens:
    """Tokens for many users at once (simulations sign in a crowd without passwords)."""
    return MintedTokens(
        tokens={
            user_id: token_issuer.issue(user_id, data.role, ttl_seconds=data.ttl_seconds)
            for user_id in data.user_ids
        }
    )


def accounts_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[sign_up, log_in, me, mint_tokens],
        dependencies=dependencies,
        tags=["accounts"],
    )
