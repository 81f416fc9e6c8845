"""The order lane answers orders in front of Litestar's router: its answers must be the route's.

The same script of orders (created, replayed, refused for every reason, malformed, rate
limited) runs against an app with the lane and one without it; statuses, headers, bodies and
request metrics must agree, ids and times aside.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from dropsim.app import create_app
from dropsim.gateway.order_lane import OrderLane, drop_of
from dropsim.settings import Settings
from tests.apiclient import bearer, make_creator, make_drop, sign_up
from tests.scrape import Samples, scrape

ID = re.compile(r"\b[a-z]{2,4}_[0-9a-hjkmnp-tv-z]{26}\b")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+(Z|[+-]\d\d:\d\d)?")
HEADERS = ("content-type", "idempotency-replayed", "ratelimit-policy", "retry-after")
"""Headers compared by value; `ratelimit` and `x-dropsim-process` only by presence."""

Answer = tuple[int, dict[str, str | None], bool, bool, str]
Script = Callable[[AsyncTestClient[Litestar]], Awaitable[list[Answer]]]


@pytest.mark.parametrize(
    ("path", "drop_id"),
    [
        ("/v1/drops/drp_1/orders", "drp_1"),
        ("/v1/drops/orders", None),
        ("/v1/drops//orders", None),
        ("/v1/drops/a/b/orders", None),
        ("/v1/drops/drp_1/orders/", None),
        ("/v1/drops/drp_1", None),
        ("/v2/drops/drp_1/orders", None),
    ],
)
def test_the_lane_takes_only_the_order_route(path: str, drop_id: str | None) -> None:
    assert drop_of(path) == drop_id


def seen(response: Any) -> Answer:
    """What must agree between the lane and the route: ids and times are blanked out."""
    headers = {name: response.headers.get(name) for name in HEADERS}
    body = TIMESTAMP.sub("<time>", ID.sub("<id>", response.text))
    return (
        response.status_code,
        headers,
        "ratelimit" in response.headers,
        "x-dropsim-process" in response.headers,
        body,
    )


async def every_answer(client: AsyncTestClient[Litestar]) -> list[Answer]:
    """Orders of every kind the route answers, in one fixed order."""
    _, creator = await make_creator(client)
    scarce = await make_drop(client, creator, starts_in=0.3, stock=2, per_user_limit=1)
    later = await make_drop(client, creator, starts_in=3600)
    await asyncio.sleep(0.4)
    (_, first), (_, second), (_, third) = [await sign_up(client) for _ in range(3)]
    route = f"/v1/drops/{scarce['id']}/orders"

    async def post(
        token: str | None, key: str | None, body: bytes = b'{"quantity": 1}', path: str = route
    ) -> Answer:
        headers = {"Content-Type": "application/json"}
        headers |= bearer(token) if token else {}
        headers |= {"Idempotency-Key": key} if key is not None else {}
        return seen(await client.post(path, content=body, headers=headers))

    return [
        await post(first, "created"),
        await post(first, "created"),  # replayed
        await post(first, "created", b'{"quantity": 2}'),  # same key, other body
        await post(first, None),
        await post(first, ""),
        await post(first, "k" * 256),
        await post("not-a-token", "bad-token"),
        await post(None, "no-token"),
        await post(first, "malformed", b"{"),
        await post(first, "zero", b'{"quantity": 0}'),
        await post(first, "unknown-field", b'{"quantity": 1, "colour": "red"}'),
        await post(first, "long", b'{"quantity": 1}' + b" " * 2000),
        await post(first, "empty", b""),  # one unit, over the limit
        await post(second, "last-unit", b"{}"),
        await post(third, "too-late"),  # sold out
        await post(third, "too-late"),  # sold out, replayed
        await post(third, "not-yet", path=f"/v1/drops/{later['id']}/orders"),
        await post(third, "nowhere", path="/v1/drops/drp_missing/orders"),
        seen(await client.get(route, headers=bearer(third))),
    ]


async def rate_limited(client: AsyncTestClient[Litestar]) -> list[Answer]:
    """Orders past the user's budget (the settings allow two a minute)."""
    _, creator = await make_creator(client)
    drop = await make_drop(client, creator, starts_in=0.3, stock=10, per_user_limit=5)
    await asyncio.sleep(0.4)
    _, buyer = await sign_up(client)
    answers = []
    for attempt in range(4):
        response = await client.post(
            f"/v1/drops/{drop['id']}/orders",
            json={"quantity": 1},
            headers=bearer(buyer) | {"Idempotency-Key": f"k{attempt}"},
        )
        answers.append(seen(response))
    return answers


def order_requests(samples: Samples) -> Counter[str]:
    """The request counter of the order route, by status."""
    return Counter(
        {
            dict(labels)["status_code"]: value
            for (name, labels), value in samples.items()
            if name == "dropsim_requests_total"
            and dict(labels).get("path") == "/v1/drops/{drop_id}/orders"
        }
    )


async def answers_and_counts(settings: Settings, script: Script) -> tuple[list[Answer], Any]:
    async with AsyncTestClient(create_app(settings)) as client:
        before = order_requests(await scrape(client))
        answers = await script(client)
        after = order_requests(await scrape(client))
    return answers, after - before


@pytest.mark.parametrize(("script", "in_lane"), [(every_answer, 9), (rate_limited, 4)])
async def test_the_lane_answers_as_the_route_does(
    settings: Settings, script: Script, in_lane: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`in_lane`: how many of the script's requests are well-formed orders the lane answers
    (the others it hands to Litestar, which answers them in both apps)."""
    answered = Counter[bool]()
    answer_in_lane = OrderLane._answer

    async def counted(lane: OrderLane, scope: Any, receive: Any, send: Any) -> None:
        answered[True] += 1
        await answer_in_lane(lane, scope, receive, send)

    monkeypatch.setattr(OrderLane, "_answer", counted)
    limits = {"rate_limit_orders": "2/m:2,100/s:100"} if script is rate_limited else {}
    lane, lane_counts = await answers_and_counts(
        settings.model_copy(update={"data_dir": settings.data_dir / "lane", **limits}), script
    )
    assert answered[True] == in_lane
    route, route_counts = await answers_and_counts(
        settings.model_copy(
            update={"data_dir": settings.data_dir / "route", "order_lane": False, **limits}
        ),
        script,
    )
    assert answered[True] == in_lane
    assert [answer[0] for answer in lane] == [answer[0] for answer in route]
    for number, (ours, theirs) in enumerate(zip(lane, route, strict=True)):
        assert ours == theirs, f"answer {number}"
    assert lane_counts == route_counts
    statuses = {answer[0] for answer in lane}
    if script is every_answer:
        assert statuses == {201, 400, 401, 404, 405, 409, 422}
    else:
        assert [answer[0] for answer in lane] == [201, 201, 429, 429]


async def post_in_pieces(
    app: Litestar, path: str, token: str, key: str, pieces: list[bytes]
) -> tuple[int, dict[str, Any], int]:
    """POST `pieces` as separate ASGI body messages: (status, body, messages the app read)."""
    messages = [
        {"type": "http.request", "body": piece, "more_body": number < len(pieces) - 1}
        for number, piece in enumerate(pieces)
    ]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        if read <= len(messages):
            return messages[read - 1]
        await asyncio.Event().wait()  # (a disconnect would come only when the client left)
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"idempotency-key", key.encode()),
        (b"content-type", b"application/json"),
        (b"host", b"testserver"),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent[1:])
    return start["status"], msgspec.json.decode(body), read


async def test_a_body_in_pieces_is_read_whole_and_a_long_one_is_handed_over_whole(
    settings: Settings,
) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        _, creator = await make_creator(client)
        drop = await make_drop(client, creator, starts_in=0.3, stock=5, per_user_limit=5)
        await asyncio.sleep(0.4)
        _, buyer = await sign_up(client)
        path = f"/v1/drops/{drop['id']}/orders"
        # (in the loop the app's lifespan runs in, as the test client's own requests are)
        in_app_loop = client.blocking_portal.call
        status, created, read = await asyncio.to_thread(
            in_app_loop,
            post_in_pieces,
            client.app,
            path,
            buyer,
            "pieces",
            [b'{"quan', b'tity": ', b"2}"],
        )
        assert (status, created["quantity"], read) == (201, 2, 3)
        # past an order's size after the second piece: Litestar gets all three, in order
        long = [b'{"quantity": 1}' + b" " * 600, b" " * 600, b" " * 10]
        status, refused, read = await asyncio.to_thread(
            in_app_loop, post_in_pieces, client.app, path, buyer, "long", long
        )
        assert (status, refused["code"], read) == (400, "invalid_request", 3)
        assert "a few bytes" in refused["detail"]
        mine = await client.get("/v1/me/orders", headers=bearer(buyer))
        assert [order["idempotency_key"] for order in mine.json()["items"]] == ["pieces"]
