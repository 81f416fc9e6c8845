"""HTTP routes of the creator service: profiles, products, drops (public reads, owner writes)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Request, Router, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.security.jwt import Token

from dropsim.accounts.models import Role
from dropsim.creators.models import Creator, Drop, DropStatus, Product
from dropsim.creators.service import CreatorService
from dropsim.gateway.auth import requires
from dropsim.gateway.tokens import Principal, TokenIssuer
from dropsim.pagination import Page, PageSize, decode_cursor, page_of

Handle = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_.-]{2,40}$")]
Text = Annotated[str, msgspec.Meta(max_length=2000)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Url = Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2000)]
Moment = Annotated[datetime, msgspec.Meta(tz=True)]
Stock = Annotated[int, msgspec.Meta(ge=1, le=10_000_000)]
Cents = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]

AuthedRequest = Request[Principal, Token, State]


class BecomeCreator(msgspec.Struct, forbid_unknown_fields=True):
    handle: Handle
    display_name: Name
    bio: Text = ""


class CreatorSession(msgspec.Struct):
    """The new creator profile and a fresh token that carries the creator role."""

    creator: Creator
    access_token: str


class NewProduct(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: Text = ""
    image_url: Url | None = None


class ProductChanges(msgspec.Struct, forbid_unknown_fields=True):
    name: Name | None = None
    description: Text | None = None
    image_url: Url | None = None


class NewDrop(msgspec.Struct, forbid_unknown_fields=True):
    product_id: str
    stock: Stock
    price_cents: Cents
    starts_at: Moment
    ends_at: Moment | None = None
    """Defaults to one hour after `starts_at`."""
    per_user_limit: Limit = 1


class DropChanges(msgspec.Struct, forbid_unknown_fields=True):
    stock: Stock | None = None
    price_cents: Cents | None = None
    per_user_limit: Limit | None = None
    starts_at: Moment | None = None
    ends_at: Moment | None = None


@post("/creators", status_code=201)
async def become_creator(
    data: JSONBody[BecomeCreator],
    request: AuthedRequest,
    creator_service: NamedDependency[CreatorService],
    token_issuer: NamedDependency[TokenIssuer],
) -> CreatorSession:
    creator = await creator_service.become_creator(
        request.user, data.handle, data.display_name, data.bio
    )
    role = Role.ADMIN if request.user.is_admin else Role.CREATOR
    return CreatorSession(creator=creator, access_token=token_issuer.issue(creator.id, role))


@get("/creators", exclude_from_auth=True)
async def list_creators(
    creator_service: NamedDependency[CreatorService],
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Creator]:
    found = await creator_service.creators(decode_cursor(cursor), limit + 1)
    return page_of(found, limit, key=lambda creator: creator.id)


@get("/creators/{creator_id:str}", exclude_from_auth=True)
async def get_creator(
    creator_id: FromPath[str], creator_service: NamedDependency[CreatorService]
) -> Creator:
    return await creator_service.creator(creator_id)


@get("/creators/by-handle/{handle:str}", exclude_from_auth=True)
async def get_creator_by_handle(
    handle: FromPath[str], creator_service: NamedDependency[CreatorService]
) -> Creator:
    return await creator_service.creator_by_handle(handle)


@get("/creators/{creator_id:str}/products", exclude_from_auth=True)
async def list_products(
    creator_id: FromPath[str],
    creator_service: NamedDependency[CreatorService],
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Product]:
    found = await creator_service.products(creator_id, decode_cursor(cursor), limit + 1)
    return page_of(found, limit, key=lambda product: product.id)


@post("/products", status_code=201, guards=[requires(Role.CREATOR)])
async def create_product(
    data: JSONBody[NewProduct],
    request: AuthedRequest,
    creator_service: NamedDependency[CreatorService],
) -> Product:
    return await creator_service.create_product(
        request.user, data.name, data.description, data.image_url
    )


@get("/products/{product_id:str}", exclude_from_auth=True)
async def get_product(
    product_id: FromPath[str], creator_service: NamedDependency[CreatorService]
) -> Product:
    return await creator_service.product(product_id)


@patch("/products/{product_id:str}", guards=[requires(Role.CREATOR)])
async def update_product(
    product_id: FromPath[str],
    data: JSONBody[ProductChanges],
    request: AuthedRequest,
    creator_service: NamedDependency[CreatorService],
) -> Product:
    return await creator_service.update_product(
        request.user, product_id, data.name, data.description, data.image_url
    )


@post("/drops", status_code=201, guards=[requires(Role.CREATOR)])
async def schedule_drop(
    data: JSONBody[NewDrop],
    request: AuthedRequest,
    creator_service: NamedDependency[CreatorService],
) -> Drop:
    return await creator_service.schedule_drop(
        request.user,
        data.product_id,
        stock=data.stock,
        price_cents=data.price_cents,
        per_user_limit=data.per_user_limit,
        starts_at=data.starts_at,
        ends_at=data.ends_at or data.starts_at + timedelta(hours=1),
    )


@get("/drops", exclude_from_auth=True)
async def list_drops(
    creator_service: NamedDependency[CreatorService],
    status: FromQuery[DropStatus | None] = None,
    creator_id: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
    limit: PageSize = 50,
) -> Page[Drop]:
    found = await creator_service.drops(
        after=decode_cursor(cursor), limit=limit + 1, status=status, creator_id=creator_id
    )
    return page_of(found, limit, key=lambda drop: drop.id)


@get("/drops/{drop_id:str}", exclude_from_auth=True)
async def get_drop(
    drop_id: FromPath[str], creator_service: NamedDependency[CreatorService]
) -> Drop:
    return await creator_service.drop(drop_id)


@patch("/drops/{drop_id:str}", guards=[requires(Role.CREATOR)])
async def reschedule_drop(
    drop_id: FromPath[str],
    data: JSONBody[DropChanges],
    request: AuthedRequest,
    creator_service: NamedDependency[CreatorService],
) -> Drop:
    return await creator_service.reschedule_drop(
        request.user,
        drop_id,
        stock=data.stock,
        price_cents=data.price_cents,
        per_user_limit=data.per_user_limit,
        starts_at=data.starts_at,
        ends_at=data.ends_at,
    )


@post("/drops/{drop_id:str}/cancel", status_code=200, guards=[requires(Role.CREATOR)])
async def cancel_drop(
    drop_id: FromPath[str], request: AuthedRequest, creator_service: NamedDependency[CreatorService]
) -> Drop:
    return await creator_service.cancel_drop(request.user, drop_id)


def creators_router(dependencies: dict[str, Provide] | Any = None) -> Router:
    return Router(
        path="/v1",
        route_handlers=[
            become_creator,
            list_creators,
            get_creator,
            get_creator_by_handle,
            list_products,
            create_product,
            get_product,
            update_product,
            schedule_drop,
            list_drops,
            get_drop,
            reschedule_drop,
            cancel_drop,
        ],
        dependencies=dependencies,
        tags=["creators"],
    )
