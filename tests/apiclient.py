"""Small HTTP helpers shared by the API tests: sign up users and creators, schedule drops."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

_counter = itertools.count()


class Client(Protocol):
    """httpx.AsyncClient, Litestar's AsyncTestClient, ... (anything with async `post`, `put`)."""

    @property
    def post(self) -> Callable[..., Awaitable[Any]]: ...

    @property
    def put(self) -> Callable[..., Awaitable[Any]]: ...


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def follow(client: Client, token: str, creator_id: str) -> None:
    response = await client.put(f"/v1/me/following/{creator_id}", headers=bearer(token))
    assert response.status_code == 200, response.text


async def place_order(client: Client, token: str, drop_id: str) -> dict[str, Any]:
    """One unit of `drop_id`, bought with a fresh Idempotency-Key: the created order."""
    response = await client.post(
        f"/v1/drops/{drop_id}/orders",
        json={"quantity": 1},
        headers={**bearer(token), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    placed: dict[str, Any] = response.json()
    return placed


async def sign_up(client: Client, handle: str | None = None) -> tuple[str, str]:
    """A new buyer: (user_id, token)."""
    handle = handle or f"user{next(_counter)}"
    response = await client.post(
        "/v1/auth/signup",
        json={"email": f"{handle}@example.com", "password": "correct horse", "handle": handle},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["user"]["id"], body["access_token"]


async def make_creator(client: Client, handle: str | None = None) -> tuple[str, str]:
    """A new creator: (creator_id, token carrying the creator role)."""
    handle = handle or f"creator{next(_counter)}"
    _, token = await sign_up(client, handle)
    response = await client.post(
        "/v1/creators",
        json={"handle": handle, "display_name": handle.title()},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["creator"]["id"], body["access_token"]


async def make_drop(
    client: Client,
    token: str,
    *,
    starts_in: float = 3600,
    lasts: float = 3600,
    stock: int = 10,
    per_user_limit: int = 1,
    product_name: str = "Hoodie",
) -> dict[str, Any]:
    """A product and a drop of it, starting `starts_in` seconds from now."""
    product = await client.post("/v1/products", json={"name": product_name}, headers=bearer(token))
    assert product.status_code == 201, product.text
    starts_at = datetime.now(UTC) + timedelta(seconds=starts_in)
    response = await client.post(
        "/v1/drops",
        json={
            "product_id": product.json()["id"],
            "stock": stock,
            "price_cents": 4900,
            "per_user_limit": per_user_limit,
            "starts_at": starts_at.isoformat(),
            "ends_at": (starts_at + timedelta(seconds=lasts)).isoformat(),
        },
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    drop: dict[str, Any] = response.json()
    return drop
