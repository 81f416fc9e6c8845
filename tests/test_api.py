"""The gateway's HTTP contract: sign-up and log-in, tokens and roles, ownership, problem bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from dropsim.accounts.models import Role
from dropsim.app import create_app
from dropsim.gateway.tokens import TokenIssuer
from dropsim.settings import Settings
from tests.apiclient import bearer, make_creator, make_drop, sign_up


@pytest.fixture
async def client(backend_settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with AsyncTestClient(create_app(backend_settings)) as test_client:
        yield test_client


def assert_problem(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with `status` (and `code`)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "code"} <= body.keys()
    if code is not None:
        assert body["code"] == code, body
    return body


async def test_sign_up_log_in_and_me(client: AsyncTestClient[Any]) -> None:
    user_id, token = await sign_up(client, "ada")
    me = await client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200
    assert me.json()["id"] == user_id
    assert me.json()["role"] == "buyer"

    login = await client.post(
        "/v1/auth/login", json={"email": "ADA@example.com", "password": "correct horse"}
    )
    assert login.status_code == 200, login.text
    assert login.json()["user"]["id"] == user_id
    again = await client.get("/v1/me", headers=bearer(login.json()["access_token"]))
    assert again.json()["id"] == user_id


async def test_wrong_password_and_unknown_email_fail_alike(client: AsyncTestClient[Any]) -> None:
    await sign_up(client, "grace")
    wrong = await client.post(
        "/v1/auth/login", json={"email": "grace@example.com", "password": "wrong password"}
    )
    unknown = await client.post(
        "/v1/auth/login", json={"email": "nobody@example.com", "password": "correct horse"}
    )
    assert assert_problem(wrong, 401, "bad_credentials") == assert_problem(
        unknown, 401, "bad_credentials"
    )


async def test_email_taken_is_a_conflict(client: AsyncTestClient[Any]) -> None:
    await sign_up(client, "linus")
    again = await client.post(
        "/v1/auth/signup",
        json={"email": "linus@example.com", "password": "another one", "handle": "linus2"},
    )
    assert_problem(again, 409, "email_taken")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no token", "garbage token", "wrong scheme"],
)
async def test_v1_needs_a_token(client: AsyncTestClient[Any], headers: dict[str, str]) -> None:
    assert_problem(await client.get("/v1/me", headers=headers), 401)
    assert_problem(await client.post("/v1/products", json={"name": "x"}, headers=headers), 401)


async def test_token_signed_with_another_secret_is_refused(client: AsyncTestClient[Any]) -> None:
    forged = TokenIssuer("some-other-secret-" + "y" * 32, 3600).issue("usr_x", Role.ADMIN)
    assert_problem(await client.get("/v1/me", headers=bearer(forged)), 401)


async def test_public_catalog_reads_need_no_token(client: AsyncTestClient[Any]) -> None:
    creator_id, token = await make_creator(client)
    drop = await make_drop(client, token)
    assert (await client.get("/v1/drops")).status_code == 200
    assert (await client.get(f"/v1/drops/{drop['id']}")).json()["id"] == drop["id"]
    assert (await client.get(f"/v1/creators/{creator_id}")).json()["id"] == creator_id
    assert (await client.get(f"/v1/products/{drop['product_id']}")).status_code == 200
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health/ready")).json()["checks"] == {"kv": "ok", "sql": "ok"}
    assert (await client.get("/schema/openapi.json")).status_code == 200


async def test_buyers_cannot_sell(client: AsyncTestClient[Any]) -> None:
    _, token = await sign_up(client)
    assert_problem(
        await client.post("/v1/products", json={"name": "x"}, headers=bearer(token)), 403
    )


async def test_a_creator_changes_only_their_own_drops(client: AsyncTestClient[Any]) -> None:
    _, owner = await make_creator(client)
    _, other = await make_creator(client)
    drop = await make_drop(client, owner)

    patch = await client.patch(f"/v1/drops/{drop['id']}", json={"stock": 1}, headers=bearer(other))
    assert_problem(patch, 403, "not_your_drop")
    cancel = await client.post(f"/v1/drops/{drop['id']}/cancel", headers=bearer(other))
    assert_problem(cancel, 403, "not_your_drop")
    product = await client.patch(
        f"/v1/products/{drop['product_id']}", json={"name": "mine now"}, headers=bearer(other)
    )
    assert_problem(product, 403, "not_your_product")
    steal = await client.post(
        "/v1/drops",
        json={
            "product_id": drop["product_id"],
            "stock": 5,
            "price_cents": 100,
            "starts_at": drop["starts_at"],
        },
        headers=bearer(other),
    )
    assert_problem(steal, 403, "not_your_product")

    unchanged = await client.get(f"/v1/drops/{drop['id']}")
    assert unchanged.json()["stock"] == drop["stock"]
    assert unchanged.json()["status"] == "scheduled"


async def test_owner_changes_are_visible_at_once(client: AsyncTestClient[Any]) -> None:
    """Writes invalidate the cache: a read right after a change sees it."""
    _, token = await make_creator(client)
    drop = await make_drop(client, token)
    assert (await client.get(f"/v1/drops/{drop['id']}")).json()["stock"] == 10  # now cached
    patch = await client.patch(f"/v1/drops/{drop['id']}", json={"stock": 3}, headers=bearer(token))
    assert patch.status_code == 200, patch.text
    assert (await client.get(f"/v1/drops/{drop['id']}")).json()["stock"] == 3
    cancel = await client.post(f"/v1/drops/{drop['id']}/cancel", headers=bearer(token))
    assert cancel.json()["status"] == "cancelled"
    assert (await client.get(f"/v1/drops/{drop['id']}")).json()["status"] == "cancelled"
    again = await client.post(f"/v1/drops/{drop['id']}/cancel", headers=bearer(token))
    assert_problem(again, 409, "drop_closed")


async def test_bad_input_gets_a_problem_not_a_500(client: AsyncTestClient[Any]) -> None:
    _, token = await make_creator(client)
    drop = await make_drop(client, token)
    auth = {**bearer(token), "Content-Type": "application/json"}
    product_id = drop["product_id"]
    cases: list[tuple[str, str, Any, int, str | None]] = [
        ("POST", "/v1/products", b"{not json", 400, "malformed_json"),
        ("POST", "/v1/products", {"name": 42}, 400, "invalid_request"),
        ("POST", "/v1/products", {"name": "x", "colour": "red"}, 400, "invalid_request"),
        ("POST", "/v1/products", b"[]", 400, "invalid_request"),
        ("POST", "/v1/products", {"name": "x" * 10_000}, 400, "invalid_request"),
        ("POST", "/v1/products", b'{"name": "' + b"x" * 70_000 + b'"}', 413, "body_too_large"),
        (
            "POST",
            "/v1/drops",
            {
                "product_id": product_id,
                "stock": 0,
                "price_cents": 1,
                "starts_at": drop["starts_at"],
            },
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/drops",
            {
                "product_id": product_id,
                "stock": 1,
                "price_cents": 1,
                "starts_at": "2030-01-01T10:00:00",
            },
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/drops",
            {"product_id": product_id, "stock": 1, "price_cents": 1, "starts_at": "tomorrow"},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/drops",
            {
                "product_id": product_id,
                "stock": 1,
                "price_cents": 1,
                "starts_at": drop["ends_at"],
                "ends_at": drop["starts_at"],
            },
            400,
            "invalid_window",
        ),
        (
            "POST",
            "/v1/drops",
            {
                "product_id": "prd_missing",
                "stock": 1,
                "price_cents": 1,
                "starts_at": drop["starts_at"],
            },
            404,
            "product_not_found",
        ),
        ("GET", "/v1/drops/drp_missing", None, 404, "drop_not_found"),
        ("GET", "/v1/creators/usr_missing", None, 404, "creator_not_found"),
        ("GET", "/v1/drops?status=exploded", None, 400, "invalid_request"),
        ("GET", "/v1/drops?limit=100000", None, 400, "invalid_request"),
        ("GET", "/v1/drops?cursor=%25%25%25", None, 400, "bad_cursor"),
        ("DELETE", "/v1/drops", None, 405, "method_not_allowed"),
        ("GET", "/v1/no-such-route", None, 404, "not_found"),
    ]
    for method, url, body, status, code in cases:
        content = body if isinstance(body, bytes) else None
        json_body = None if isinstance(body, bytes) or body is None else body
        response = await client.request(method, url, content=content, json=json_body, headers=auth)
        assert_problem(response, status, code)


async def test_admin_mints_tokens_in_bulk(
    client: AsyncTestClient[Any], backend_settings: Settings
) -> None:
    admin = TokenIssuer(backend_settings.signing_secret(), 3600).issue("ops", Role.ADMIN)
    user_id, buyer = await sign_up(client)
    minted = await client.post(
        "/v1/admin/tokens", json={"user_ids": [user_id, "usr_other"]}, headers=bearer(admin)
    )
    assert minted.status_code == 200, minted.text
    tokens = minted.json()["tokens"]
    assert set(tokens) == {user_id, "usr_other"}
    me = await client.get("/v1/me", headers=bearer(tokens[user_id]))
    assert me.json()["id"] == user_id
    refused = await client.post(
        "/v1/admin/tokens", json={"user_ids": [user_id]}, headers=bearer(buyer)
    )
    assert_problem(refused, 403)


async def test_pages_walk_every_drop_once(client: AsyncTestClient[Any]) -> None:
    _, token = await make_creator(client)
    made = {(await make_drop(client, token))["id"] for _ in range(7)}
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/drops", params=params)).json()
        seen.extend(drop["id"] for drop in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(made)
